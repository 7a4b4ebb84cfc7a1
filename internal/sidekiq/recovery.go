package sidekiq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// recoveredKey counts, inside the payload, how often a job was rescued from
// a dead process within the last RecoveryWindow; recoveredAtKey holds the
// times of those rescues (an array of epoch seconds, oldest first), so older
// ones can be forgotten. Sidekiq keeps unknown keys, so both survive Ruby.
const (
	recoveredKey   = "ferry_recovered"
	recoveredAtKey = "ferry_recovered_at"
)

// RecoveryResult counts what one recovery pass did.
type RecoveryResult struct {
	Processes int // dead processes whose lists were emptied
	Requeued  int // jobs pushed back to their queues
	Killed    int // poison pills and invalid payloads sent to the dead set (or dropped, for dead:false)
	// Waiting counts processes seen without their alive key but not yet
	// for RecoveryGrace; the first of them may be recovered after RetryIn.
	Waiting int
	RetryIn time.Duration
}

// ErrLocked means another process holds the recovery lock right now.
var ErrLocked = errors.New("recovery is running in another process")

// RecoverOrphans pushes the in-flight and staged jobs of dead ferry
// processes back to their queues. A process is dead once its alive key has
// been missing, continuously, for RecoveryGrace: one missing key is not
// enough, because an empty Redis restart (or an eviction) removes the keys
// of live processes too, and they re-create them within a heartbeat. Each
// job moves only if its owner is still missing at that moment (checked in
// the same script), so a process that comes back keeps its jobs.
//
// It runs under a cluster-wide lock so only one process recovers at a time;
// it is meant to run periodically on every process, not only at boot, so a
// process that is killed and never returns has its jobs rescued within
// AliveTTL + RecoveryGrace plus one pass (RetryIn says when to look again).
func (b *Broker) RecoverOrphans(ctx context.Context) (RecoveryResult, error) {
	var res RecoveryResult
	token := NewJID()
	// Short TTL: if this process or Redis dies mid-pass the lock must not
	// delay everyone else's recovery for long.
	ok, err := b.rdb.SetNX(ctx, keyRecoveryLock, token, 15*time.Second).Result()
	if err != nil {
		return res, fmt.Errorf("recovery lock: %w", err)
	}
	if !ok {
		return res, ErrLocked
	}
	defer unlockScript.Run(context.WithoutCancel(ctx), b.rdb, []string{keyRecoveryLock}, token)

	reg, err := b.rdb.HGetAll(ctx, keyFetchers).Result()
	if err != nil {
		return res, fmt.Errorf("recovery: %w", err)
	}
	lists := map[string][]string{} // identity -> queues
	for id, qs := range reg {
		var queues []string
		_ = json.Unmarshal([]byte(qs), &queues)
		lists[id] = queues
	}
	// Safety net: private lists whose owner never registered (or whose
	// registration was lost) are found by scanning.
	iter := b.rdb.Scan(ctx, 0, patternInflight, 1000).Iterator()
	for iter.Next(ctx) {
		parts := strings.SplitN(iter.Val(), "|", 3)
		if len(parts) == 3 && !slices.Contains(lists[parts[1]], parts[2]) {
			lists[parts[1]] = append(lists[parts[1]], parts[2])
		}
	}
	if err := iter.Err(); err != nil {
		return res, fmt.Errorf("recovery scan: %w", err)
	}
	iter = b.rdb.Scan(ctx, 0, "ferry:staging|*", 1000).Iterator()
	for iter.Next(ctx) {
		if id, ok := strings.CutPrefix(iter.Val(), "ferry:staging|"); ok {
			if _, seen := lists[id]; !seen {
				lists[id] = nil
			}
		}
	}
	if err := iter.Err(); err != nil {
		return res, fmt.Errorf("recovery scan: %w", err)
	}
	if err := b.forgetSightings(ctx, lists); err != nil {
		return res, err
	}
	// One clock for every sighting: Redis's, not each recoverer's.
	now, err := b.rdb.Time(ctx).Result()
	if err != nil {
		return res, fmt.Errorf("recovery: %w", err)
	}
	for id, queues := range lists {
		if id == b.identity {
			continue
		}
		left, err := observeMissingScript.Run(ctx, b.rdb, []string{aliveKey(id), keyMissingSince},
			id, now.UnixMilli(), b.opts.RecoveryGrace.Milliseconds()).Int64()
		if err != nil {
			return res, fmt.Errorf("recovery: %w", err)
		}
		switch {
		case left < 0: // alive
			continue
		case left > 0:
			res.Waiting++
			if in := time.Duration(left) * time.Millisecond; res.RetryIn == 0 || in < res.RetryIn {
				res.RetryIn = in
			}
			continue
		}
		if err := b.recoverProcess(ctx, id, queues, &res); err != nil {
			if errors.Is(err, errOwnerBack) {
				b.log.Info("process came back while its jobs were being recovered; it keeps the rest", zap.String("identity", id))
				continue
			}
			return res, err
		}
	}
	if res.Requeued+res.Killed > 0 {
		if err := b.rdb.IncrBy(ctx, keyStatRecovered, int64(res.Requeued+res.Killed)).Err(); err != nil {
			b.log.Warn("could not count recoveries", zap.Error(err))
		}
		b.log.Warn("recovered jobs of dead processes",
			zapInt("processes", res.Processes), zapInt("requeued", res.Requeued), zapInt("killed", res.Killed))
	}
	return res, nil
}

// errOwnerBack means a process refreshed its liveness while its jobs were
// being recovered: it owns what is left in its lists again.
var errOwnerBack = errors.New("owner is alive again")

// recoverProcess empties the private lists of dead process id and forgets it.
func (b *Broker) recoverProcess(ctx context.Context, id string, queues []string, res *RecoveryResult) error {
	for _, q := range queues {
		if err := b.recoverList(ctx, id, inflightKey(id, q), q, res); err != nil {
			return err
		}
	}
	if err := b.recoverList(ctx, id, stagingKey(id), "", res); err != nil {
		return err
	}
	if _, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, keyFetchers, id)
		p.HDel(ctx, keyMissingSince, id)
		// Off the Busy page too: its jobs are back in their queues, and
		// its work hashes would list them twice until they expire. (A
		// process that was only cut off re-adds itself at its next beat.)
		p.SRem(ctx, keyProcesses, id)
		p.Unlink(ctx, id, workKey(id), workersKey(id))
		return nil
	}); err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	res.Processes++
	return nil
}

// forgetSightings drops missing-since entries of processes that have no
// registration or list left (recovered, or stopped cleanly), so the hash
// does not grow with every process that ever ran.
func (b *Broker) forgetSightings(ctx context.Context, lists map[string][]string) error {
	ids, err := b.rdb.HKeys(ctx, keyMissingSince).Result()
	if err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	var stale []string
	for _, id := range ids {
		if _, ok := lists[id]; !ok {
			stale = append(stale, id)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	return b.rdb.HDel(ctx, keyMissingSince, stale...).Err()
}

// recoverList empties one private list of the dead process owner. queue ==
// "" means a staging list, whose entries go to the queue named in their
// payload. It returns errOwnerBack as soon as owner refreshes its liveness.
func (b *Broker) recoverList(ctx context.Context, owner, key, queue string, res *RecoveryResult) error {
	items, err := b.rdb.LRange(ctx, key, 0, -1).Result()
	if err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	for _, s := range items {
		raw := []byte(s)
		if queue == "" {
			if err := b.pushStagedFenced(ctx, owner, key, raw); err != nil {
				return err
			}
			res.Requeued++
			continue
		}
		j, perr := ParseJob(raw)
		if perr != nil {
			ok, err := b.settleFenced(ctx, owner, key, keyDead, raw, b.buryable(raw, queue), "dead", formatFloatTime(epoch(b.opts.Now())))
			if err != nil {
				return err
			}
			if ok {
				res.Killed++
			}
			continue
		}
		n := j.Clone()
		times := b.recentRecoveries(j)
		n.SetInt(recoveredKey, int64(len(times)))
		n.Set(recoveredAtKey, encodeTimes(times))
		if len(times) > b.opts.MaxRecoveries {
			entry := n.Clone()
			entry.SetString("error_class", "Ferry::PoisonPill")
			entry.SetString("error_message", fmt.Sprintf(
				"job was in flight on %d worker processes that died within %s (last: %s); it may be what kills them, so it was moved to the dead set instead of being run again",
				len(times), formatWindow(b.opts.RecoveryWindow), strings.SplitN(key, "|", 3)[1]))
			if !entry.Has("failed_at") {
				entry.SetTime("failed_at", epoch(b.opts.Now()))
			}
			if entry.Has("retry_count") {
				entry.SetTime("retried_at", epoch(b.opts.Now()))
			}
			op := "dead"
			if string(j.Get("dead")) == "false" {
				op = "drop" // as Sidekiq Pro 8 does for dead:false
			}
			ok, err := b.settleFenced(ctx, owner, key, keyDead, raw, validUTF8(entry.Encode()), op, formatFloatTime(epoch(b.opts.Now())))
			if err != nil {
				return err
			}
			if ok {
				res.Killed++
			}
			continue
		}
		ok, err := b.settleFenced(ctx, owner, key, QueueKey(queue), raw, n.Encode(), "rpush", queue)
		if err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
		if ok {
			res.Requeued++
		}
	}
	return nil
}

// recoveryClockSkew is how far ahead of ours a rescue time may be and
// still be taken as written; beyond, it counts as now.
const recoveryClockSkew = time.Hour

// recentRecoveries returns the times (epoch seconds, oldest first) of j's
// rescues within the last RecoveryWindow, this one (now) included. We
// always write as many times as the count, so a rescue counted in
// recoveredKey but missing from recoveredAtKey was made by an older ferry,
// which keeps no times (and only bumps the count of a payload that has
// some): its time is unknown, so it counts as now, which keeps it for a
// whole window.
func (b *Broker) recentRecoveries(j *Job) []float64 {
	now := epoch(b.opts.Now())
	cutoff := now - b.opts.RecoveryWindow.Seconds()
	var stored []float64
	if err := json.Unmarshal(j.Get(recoveredAtKey), &stored); err != nil {
		stored = nil // missing or unreadable: only the count is known
	}
	times := make([]float64, 0, len(stored)+2)
	for _, t := range stored {
		switch {
		case t <= cutoff:
		case t > now+recoveryClockSkew.Seconds():
			// Another host's clock may be a little ahead of ours; a time
			// far ahead (milliseconds, garbage) would count forever.
			times = append(times, now)
		default:
			times = append(times, t)
		}
	}
	count, _ := j.Int(recoveredKey)
	if count > int64(len(stored)) {
		// Past MaxRecoveries+1 the job is killed anyway; the cap keeps a
		// garbage count from allocating.
		for unknown := min(count-int64(len(stored)), int64(b.opts.MaxRecoveries)+1); unknown > 0; unknown-- {
			times = append(times, now)
		}
	}
	return append(times, now)
}

// encodeTimes writes epoch seconds as a JSON array of floats.
func encodeTimes(times []float64) json.RawMessage {
	var sb strings.Builder
	sb.WriteByte('[')
	for i, t := range times {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(formatFloatTime(t))
	}
	sb.WriteByte(']')
	return json.RawMessage(sb.String())
}

// formatWindow prints a recovery window the short way ("72h", "90m").
func formatWindow(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// RecoveredTotal is how many jobs have ever been rescued from dead
// processes (pushed back or, as poison pills, killed).
func RecoveredTotal(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	n, err := rdb.Get(ctx, keyStatRecovered).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return n, err
}

// InFlightTotal counts the jobs held in every ferry process's private
// lists right now (running, or waiting for recovery).
func InFlightTotal(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	var total int64
	iter := rdb.Scan(ctx, 0, patternInflight, 1000).Iterator()
	for iter.Next(ctx) {
		n, err := rdb.LLen(ctx, iter.Val()).Result()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, iter.Err()
}
