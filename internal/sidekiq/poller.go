package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnqueueDue moves every retry, then schedule, entry whose time has come to
// its queue, resetting enqueued_at. Entries pass through a private staging
// list so that a crash between removal and push loses nothing (recovery
// pushes staged entries on). Returns how many jobs were enqueued.
func (b *Broker) EnqueueDue(ctx context.Context) (int, error) {
	total := 0
	// First push on anything an earlier pass staged but could not push
	// (e.g. Redis went away in between).
	staging := stagingKey(b.identity)
	left, err := b.rdb.LRange(ctx, staging, 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("poll: %w", err)
	}
	for _, raw := range left {
		if err := b.pushStaged(ctx, staging, []byte(raw)); err != nil {
			return total, err
		}
		total++
	}
	for _, set := range []string{keyRetry, keySchedule} {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			now := formatScore(epoch(b.opts.Now()))
			items, err := dueScript.Run(ctx, b.rdb, []string{set, staging}, now, 100).StringSlice()
			if err != nil {
				return total, fmt.Errorf("poll %s: %w", set, err)
			}
			for _, raw := range items {
				if err := b.pushStaged(ctx, staging, []byte(raw)); err != nil {
					return total, err
				}
				total++
			}
			if len(items) < 100 {
				break
			}
		}
	}
	return total, nil
}

// pushStaged pushes one staged entry to its queue (or, if it is not a
// valid job, to the dead set).
func (b *Broker) pushStaged(ctx context.Context, staging string, raw []byte) error {
	return b.pushStagedFenced(ctx, "", staging, raw)
}

// pushStagedFenced is pushStaged on the staging list of owner ("": ours),
// done only while owner is still missing (see settleFenced).
func (b *Broker) pushStagedFenced(ctx context.Context, owner, staging string, raw []byte) error {
	j, err := ParseJob(raw)
	if err != nil {
		_, err = b.settleFenced(ctx, owner, staging, keyDead, raw, raw, "dead", formatFloatTime(epoch(b.opts.Now())))
		return err
	}
	n := reenqueued(j, b.opts.Now())
	q := n.Queue()
	_, err = b.settleFenced(ctx, owner, staging, QueueKey(q), raw, n.Encode(), "lpush", q)
	if err != nil {
		return fmt.Errorf("enqueue scheduled %s: %w", j.JID(), err)
	}
	return nil
}

// PruneProcesses removes from the processes set the identities whose
// process hash has expired (killed without a clean stop), as Sidekiq 7's
// scheduled poller does at most once a minute across the cluster: they
// inflate the poll interval (processes x 5 s) and the Web UI's process
// count. It returns how many it removed; 0 when another process pruned
// within the minute.
func (b *Broker) PruneProcesses(ctx context.Context) (int, error) {
	ok, err := b.rdb.SetNX(ctx, keyProcessCleanup, "1", processCleanupEvery).Result()
	if err != nil || !ok {
		return 0, err
	}
	ids, err := b.rdb.SMembers(ctx, keyProcesses).Result()
	if err != nil {
		return 0, err
	}
	infos := make([]*redis.StringCmd, len(ids))
	if _, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			infos[i] = p.HGet(ctx, id, "info")
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	var gone []any
	for i, c := range infos {
		if errors.Is(c.Err(), redis.Nil) {
			gone = append(gone, ids[i])
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	n, err := b.rdb.SRem(ctx, keyProcesses, gone...).Result()
	return int(n), err
}

// ProcessCount is SCARD processes, at least 1.
func (b *Broker) ProcessCount(ctx context.Context) int {
	n, err := b.rdb.SCard(ctx, keyProcesses).Result()
	if err != nil || n < 1 {
		return 1
	}
	return int(n)
}

// PollInterval is Sidekiq's random poll interval: avg = processes ×
// average (default 5 s, so a cluster polls about every 5 s in total);
// fewer than 10 processes sleep uniform [avg/2, 1.5·avg), more sleep
// uniform [0, avg) (sidekiq-protocol.md §2.5).
func PollInterval(processes int, average time.Duration, r *rand.Rand) time.Duration {
	if average <= 0 {
		average = 5 * time.Second
	}
	avg := float64(max(processes, 1)) * float64(average)
	var d float64
	if processes < 10 {
		d = avg*r.Float64() + avg/2
	} else {
		d = avg * r.Float64()
	}
	return time.Duration(d)
}
