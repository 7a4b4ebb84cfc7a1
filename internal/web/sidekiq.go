package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Sidekiq's key names (sidekiq-protocol.md §2.1), named once in queue.
const (
	keyQueues    = sidekiq.KeyQueues
	keySchedule  = sidekiq.KeySchedule
	keyRetry     = sidekiq.KeyRetry
	keyDead      = sidekiq.KeyDead
	keyProcesses = sidekiq.KeyProcesses
	keyProcessed = sidekiq.KeyStatProcessed
	keyFailed    = sidekiq.KeyStatFailed
)

// Process is one entry of the Busy page.
type Process struct {
	Identity    string
	Hostname    string
	Pid         int
	Tag         string
	Version     string
	Queues      []string
	Labels      []string
	Concurrency int
	Busy        int
	Quiet       bool
	StartedAt   time.Time
	Beat        time.Time
	RSSKB       int64
	Work        []Work
}

// Work is one job a process is running now.
type Work struct {
	Process string
	Slot    string
	Queue   string
	Class   string
	JID     string
	Args    string
	RunAt   time.Time
}

// QueueInfo is one row of the Queues page.
type QueueInfo struct {
	Name    string
	Size    int64
	Latency float64 // seconds since the oldest job was enqueued
}

// Entry is a job in the schedule, retry or dead set.
type Entry struct {
	Score        float64
	At           time.Time
	JID          string
	Class        string
	Queue        string
	Args         string
	ErrorClass   string
	ErrorMessage string
	RetryCount   int64
	Raw          string
}

// Key is the stable identifier used by forms: "<score>-<jid>", as Sidekiq's UI.
func (e Entry) Key() string { return strconv.FormatFloat(e.Score, 'f', -1, 64) + "-" + e.JID }

// Stats is the dashboard summary.
type Stats struct {
	Processed, Failed              int64
	Enqueued, Scheduled, Retries   int64
	Dead, Processes, Busy, Threads int64
}

type sidekiqView struct {
	rdb redis.UniversalClient
	now func() time.Time
}

func (s *sidekiqView) Processes(ctx context.Context) ([]Process, error) {
	ids, err := s.rdb.SMembers(ctx, keyProcesses).Result()
	if err != nil {
		return nil, fmt.Errorf("read processes: %w", err)
	}
	sort.Strings(ids)
	pipe := s.rdb.Pipeline()
	hm := make([]*redis.SliceCmd, len(ids))
	work := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		hm[i] = pipe.HMGet(ctx, id, "info", "busy", "beat", "quiet", "rss")
		work[i] = pipe.HGetAll(ctx, sidekiq.WorkKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read processes: %w", err)
	}
	var out []Process
	for i, id := range ids {
		v := hm[i].Val()
		info, _ := v[0].(string)
		if info == "" {
			continue // expired: Sidekiq's readers skip it too
		}
		var pi sidekiq.ProcessInfo
		_ = json.Unmarshal([]byte(info), &pi)
		p := Process{Identity: id, Hostname: pi.Hostname, Pid: pi.Pid, Tag: pi.Tag, Version: pi.Version,
			Queues: pi.Queues, Labels: pi.Labels, Concurrency: pi.Concurrency, StartedAt: epochTime(pi.StartedAt)}
		p.Busy, _ = strconv.Atoi(str(v[1]))
		beat, _ := strconv.ParseFloat(str(v[2]), 64)
		p.Beat = epochTime(beat)
		p.Quiet = str(v[3]) == "true"
		p.RSSKB, _ = strconv.ParseInt(str(v[4]), 10, 64)
		for slot, raw := range work[i].Val() {
			var w struct {
				Queue   string          `json:"queue"`
				Payload json.RawMessage `json:"payload"`
				RunAt   float64         `json:"run_at"`
			}
			if json.Unmarshal([]byte(raw), &w) != nil {
				continue
			}
			payload := []byte(w.Payload)
			var asString string
			if json.Unmarshal(w.Payload, &asString) == nil {
				payload = []byte(asString) // Sidekiq stores the payload as a string
			}
			wk := Work{Process: id, Slot: slot, Queue: w.Queue, RunAt: epochTime(w.RunAt)}
			if j, err := sidekiq.ParseJob(payload); err == nil {
				wk.Class, wk.JID, wk.Args = j.DisplayClass(), j.JID(), string(j.Args())
			}
			p.Work = append(p.Work, wk)
		}
		sort.Slice(p.Work, func(a, b int) bool { return p.Work[a].RunAt.Before(p.Work[b].RunAt) })
		out = append(out, p)
	}
	return out, nil
}

func (s *sidekiqView) Queues(ctx context.Context) ([]QueueInfo, error) {
	names, err := s.rdb.SMembers(ctx, keyQueues).Result()
	if err != nil {
		return nil, fmt.Errorf("read queues: %w", err)
	}
	sort.Strings(names)
	pipe := s.rdb.Pipeline()
	lens := make([]*redis.IntCmd, len(names))
	oldest := make([]*redis.StringCmd, len(names))
	for i, n := range names {
		lens[i] = pipe.LLen(ctx, sidekiq.QueueKey(n))
		oldest[i] = pipe.LIndex(ctx, sidekiq.QueueKey(n), -1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read queues: %w", err)
	}
	now := s.now()
	out := make([]QueueInfo, len(names))
	for i, n := range names {
		out[i] = QueueInfo{Name: n, Size: lens[i].Val(), Latency: latency(oldest[i].Val(), now)}
	}
	return out, nil
}

// latency is Sidekiq's Queue#latency: now - enqueued_at of the oldest job,
// read by its JSON type as Sidekiq 8 does (integer: epoch milliseconds).
func latency(raw string, now time.Time) float64 {
	if raw == "" {
		return 0
	}
	var j struct {
		EnqueuedAt json.RawMessage `json:"enqueued_at"`
	}
	if json.Unmarshal([]byte(raw), &j) != nil {
		return 0
	}
	at, ok := sidekiq.ParseTimestamp(j.EnqueuedAt)
	if !ok {
		return 0
	}
	return math.Max(0, now.Sub(at).Seconds())
}

// SetName validates a sorted-set name from the URL.
func setKey(name string) (string, bool) {
	switch name {
	case "retries":
		return keyRetry, true
	case "dead":
		return keyDead, true
	case "scheduled":
		return keySchedule, true
	}
	return "", false
}

// Entries returns one page of a sorted set: retries and scheduled soonest
// first, dead most recent first (as Sidekiq's UI).
func (s *sidekiqView) Entries(ctx context.Context, key string, offset, limit int64) ([]Entry, int64, error) {
	total, err := s.rdb.ZCard(ctx, key).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", key, err)
	}
	var zs []redis.Z
	if key == keyDead {
		zs, err = s.rdb.ZRevRangeWithScores(ctx, key, offset, offset+limit-1).Result()
	} else {
		zs, err = s.rdb.ZRangeWithScores(ctx, key, offset, offset+limit-1).Result()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", key, err)
	}
	out := make([]Entry, 0, len(zs))
	for _, z := range zs {
		out = append(out, parseEntry(z))
	}
	return out, total, nil
}

func parseEntry(z redis.Z) Entry {
	raw, _ := z.Member.(string)
	e := Entry{Score: z.Score, At: epochTime(z.Score), Raw: raw}
	if j, err := sidekiq.ParseJob([]byte(raw)); err == nil {
		e.JID, e.Class, e.Queue, e.Args = j.JID(), j.DisplayClass(), j.Queue(), string(j.Args())
		e.ErrorClass = unquoteJSON(j.Get("error_class"))
		e.ErrorMessage = unquoteJSON(j.Get("error_message"))
		e.RetryCount, _ = j.Int("retry_count")
	} else {
		e.Class = "(invalid payload)"
		e.ErrorMessage = err.Error()
	}
	return e
}

// ErrBadKey is a malformed "<score>-<jid>" entry key.
var ErrBadKey = errors.New("bad entry key")

func parseKey(k string) (float64, string, error) {
	i := strings.IndexByte(k, '-')
	if i <= 0 || i == len(k)-1 {
		return 0, "", ErrBadKey
	}
	score, err := strconv.ParseFloat(k[:i], 64)
	if err != nil || math.IsNaN(score) || math.IsInf(score, 0) {
		return 0, "", ErrBadKey
	}
	return score, k[i+1:], nil
}

// take removes the entries matching key from the set and returns their
// payloads. ZREM decides the race: only the caller that removed a member
// gets it, so two operators clicking "retry" do not enqueue it twice.
func (s *sidekiqView) take(ctx context.Context, set, key string) ([]string, error) {
	score, jid, err := parseKey(key)
	if err != nil {
		return nil, err
	}
	sc := strconv.FormatFloat(score, 'f', -1, 64)
	members, err := s.rdb.ZRangeByScore(ctx, set, &redis.ZRangeBy{Min: sc, Max: sc}).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", set, err)
	}
	var taken []string
	for _, m := range members {
		if j, err := sidekiq.ParseJob([]byte(m)); err == nil && j.JID() != jid {
			continue
		} else if err != nil && jid != "" && !strings.Contains(m, jid) {
			continue
		}
		n, err := s.rdb.ZRem(ctx, set, m).Result()
		if err != nil {
			return taken, fmt.Errorf("remove from %s: %w", set, err)
		}
		if n == 1 {
			taken = append(taken, m)
		}
	}
	if len(taken) == 0 {
		return nil, ErrNotFound
	}
	return taken, nil
}

// Delete removes an entry.
func (s *sidekiqView) Delete(ctx context.Context, set, key string) error {
	_, err := s.take(ctx, set, key)
	return err
}

// RetryNow moves an entry to its queue now. A retry-set entry has its
// retry_count lowered by one, as Sidekiq's SortedEntry#retry does, so the
// manual run does not use up an attempt. If the push fails the entry is
// put back.
func (s *sidekiqView) RetryNow(ctx context.Context, set, key string) error {
	taken, err := s.take(ctx, set, key)
	if err != nil {
		return err
	}
	client := sidekiq.NewClient(s.rdb)
	for _, m := range taken {
		j, err := sidekiq.ParseJob([]byte(m))
		if err != nil {
			// Not a job: it cannot run; keep it where it was.
			s.rdb.ZAdd(context.WithoutCancel(ctx), set, redis.Z{Score: mustScore(key), Member: m})
			return fmt.Errorf("retry: %w", err)
		}
		if set == keyRetry {
			if n, ok := j.Int("retry_count"); ok {
				j.SetInt("retry_count", n-1)
			}
		}
		if err := client.PushJob(ctx, j); err != nil {
			s.rdb.ZAdd(context.WithoutCancel(ctx), set, redis.Z{Score: mustScore(key), Member: m})
			return fmt.Errorf("retry: %w", err)
		}
	}
	return nil
}

func mustScore(key string) float64 {
	s, _, _ := parseKey(key)
	return s
}

func (s *sidekiqView) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	pipe := s.rdb.Pipeline()
	proc := pipe.Get(ctx, keyProcessed)
	fail := pipe.Get(ctx, keyFailed)
	sched := pipe.ZCard(ctx, keySchedule)
	retr := pipe.ZCard(ctx, keyRetry)
	dead := pipe.ZCard(ctx, keyDead)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return st, fmt.Errorf("read stats: %w", err)
	}
	st.Processed, _ = proc.Int64()
	st.Failed, _ = fail.Int64()
	st.Scheduled, st.Retries, st.Dead = sched.Val(), retr.Val(), dead.Val()
	return st, nil
}

// LegacyRemaining counts BackgroundMigrationWorker jobs per migration
// class in the background_migration queue, the scheduled set, and the
// retry and dead sets (GitLab's JobCoordinator#remaining counts the
// first two).
func (s *sidekiqView) LegacyRemaining(ctx context.Context) (map[string]*sidekiq.JobCounts, error) {
	out, err := sidekiq.CountByArg0(ctx, s.rdb, LegacyWorkerClass, LegacyQueue, true)
	if err != nil {
		return nil, fmt.Errorf("count legacy migrations: %w", err)
	}
	return out, nil
}

// Legacy Sidekiq names (gitlab-background-migrations.md §6.1).
const (
	LegacyWorkerClass = "BackgroundMigrationWorker"
	LegacyQueue       = "background_migration"
)

func str(v any) string {
	s, _ := v.(string)
	return s
}

func unquoteJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func epochTime(f float64) time.Time {
	if f <= 0 {
		return time.Time{}
	}
	if f > 1e11 {
		f /= 1000
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}
