package sidekiq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// ProcessInfo is the "info" JSON of a process hash, the fields the Sidekiq
// Busy page renders (sidekiq-protocol.md §2.7): 6.4's, plus weights,
// version and embedded (7.x launcher.rb to_data) and capsules (8.x).
type ProcessInfo struct {
	Hostname    string   `json:"hostname"`
	StartedAt   float64  `json:"started_at"`
	Pid         int      `json:"pid"`
	Tag         string   `json:"tag"`
	Concurrency int      `json:"concurrency"`
	Queues      []string `json:"queues"`
	// Weights has one object per capsule (ferry has one), queue -> weight
	// in queue order; 7.x's Busy page prints it as "a: 3, b: 1" and falls
	// back to Queues only when it is absent.
	Weights  []QueueWeights `json:"weights,omitempty"`
	Labels   []string       `json:"labels"`
	Identity string         `json:"identity"`
	Version  string         `json:"version"`
	Embedded bool           `json:"embedded"`
	// Capsules is 8.x's capsule name -> settings (Capsule#to_h).
	Capsules map[string]Capsule `json:"capsules,omitempty"`
}

// Capsule is one Sidekiq 8 capsule as its process info describes it.
type Capsule struct {
	Concurrency int          `json:"concurrency"`
	Mode        string       `json:"mode"` // "strict", "random" or "weighted"
	Weights     QueueWeights `json:"weights"`
}

// SetQueues fills Queues, Weights and Capsules (one "default" capsule of
// Concurrency threads) from a worker's queue list, as Sidekiq 7 and 8
// describe a process whose queues were given as "-q a,3 -q b,1".
func (p *ProcessInfo) SetQueues(qs []WeightedQueue) {
	p.Queues = make([]string, len(qs))
	for i, q := range qs {
		p.Queues[i] = q.Name
	}
	w := QueueWeights(slices.Clone(qs))
	p.Weights = []QueueWeights{w}
	p.Capsules = map[string]Capsule{"default": {Concurrency: p.Concurrency, Mode: w.Mode(), Weights: w}}
}

// QueueWeights is a JSON object queue name -> weight that keeps the
// queues' order, as Ruby's Hash does.
type QueueWeights []WeightedQueue

// Mode is Sidekiq's fetch mode for these weights (7.x/8.x capsule.rb):
// strict when all are 0, random when all are 1, weighted otherwise.
func (w QueueWeights) Mode() string {
	zero, one := true, true
	for _, q := range w {
		zero = zero && q.Weight == 0
		one = one && q.Weight == 1
	}
	switch {
	case zero:
		return "strict"
	case one:
		return "random"
	}
	return "weighted"
}

// MarshalJSON writes {"a":3,"b":1} in queue order.
func (w QueueWeights) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, q := range w {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, marshalString(q.Name)...)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(q.Weight), 10)
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads an object of integer weights, keeping its order.
func (w *QueueWeights) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return fmt.Errorf("%w: weights must be a JSON object", ErrInvalidProcessInfo)
	}
	var out QueueWeights
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidProcessInfo, err)
		}
		var n int
		if err := dec.Decode(&n); err != nil {
			return fmt.Errorf("%w: weight of %v: %v", ErrInvalidProcessInfo, tok, err)
		}
		out = append(out, WeightedQueue{Name: tok.(string), Weight: n})
	}
	*w = out
	return nil
}

// ErrInvalidProcessInfo reports a process "info" field of the wrong shape.
var ErrInvalidProcessInfo = errors.New("invalid process info")

// WorkEntry is one busy slot as the Busy page reads it.
type WorkEntry struct {
	Queue   string
	Payload []byte // raw job string
	RunAt   time.Time
}

func (w WorkEntry) encode() string {
	js, _ := json.Marshal(struct {
		Queue   string `json:"queue"`
		Payload string `json:"payload"`
		RunAt   int64  `json:"run_at"`
	}{w.Queue, string(w.Payload), w.RunAt.Unix()})
	return string(js)
}

// BeatState is what a process reports at each heartbeat.
type BeatState struct {
	Busy      int
	Quiet     bool
	Processed int64 // counts since the last successful beat
	Failed    int64
	Work      map[string]WorkEntry // slot id -> job
	RSSKB     int64
}

// statsTTL is Sidekiq's 5-year expiry of daily stat keys.
const statsTTL = 5 * 365 * 24 * time.Hour

// processTTL is Sidekiq's 60 s expiry of process and work hashes.
const processTTL = 60 * time.Second

// Heartbeat writes one beat in Sidekiq's order: stats, work hashes, RTT,
// process hash, and returns any signals ("TSTP", "TERM", "TTIN") queued
// for this process by the Web UI or API. If it returns an error the stats
// were not flushed and the caller keeps the counts for the next beat.
func (b *Broker) Heartbeat(ctx context.Context, info ProcessInfo, st BeatState) ([]string, error) {
	now := b.opts.Now()
	id := b.identity
	info.Identity = id
	if info.Queues == nil {
		info.Queues = []string{}
	}
	if info.Labels == nil {
		info.Labels = []string{}
	}
	infoJSON, _ := json.Marshal(info)
	queuesJSON, _ := json.Marshal(info.Queues)

	start := time.Now()
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	rtt := time.Since(start).Microseconds()

	var signals *redis.StringSliceCmd
	var alive *redis.StatusCmd
	refresh := time.Now() // before the write is sent: the key outlives this by AliveTTL
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		addStats(ctx, p, now, st.Processed, st.Failed)
		p.Unlink(ctx, workersKey(id), workKey(id))
		if len(st.Work) > 0 {
			fields := make([]any, 0, 2*len(st.Work))
			for tid, w := range st.Work {
				fields = append(fields, tid, w.encode())
			}
			p.HSet(ctx, workersKey(id), fields...)
			p.HSet(ctx, workKey(id), fields...)
			p.Expire(ctx, workersKey(id), processTTL)
			p.Expire(ctx, workKey(id), processTTL)
		}
		p.SAdd(ctx, keyProcesses, id)
		p.HSet(ctx, id,
			"info", string(infoJSON),
			"busy", st.Busy,
			"beat", formatFloatTime(epoch(now)),
			"rtt_us", rtt,
			"quiet", strconv.FormatBool(st.Quiet),
			"rss", st.RSSKB,
			"concurrency", info.Concurrency,
		)
		p.Expire(ctx, id, processTTL)
		alive = p.Set(ctx, aliveKey(id), formatFloatTime(epoch(now)), b.opts.AliveTTL)
		p.HDel(ctx, keyMissingSince, id) // alive again: any recovery countdown restarts
		// Re-register each beat: a recovery pass that ran while this
		// process could not reach Redis may have dropped the entry.
		p.HSet(ctx, keyFetchers, id, string(queuesJSON))
		signals = p.RPopCount(ctx, signalsKey(id), 10)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	// The transaction's error is its first failed command's; check the
	// liveness write itself (e.g. refused under maxmemory).
	if err := alive.Err(); err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	b.noteAliveRefresh(refresh)
	sigs, _ := signals.Result()
	return sigs, nil
}

// Register records which queues this process fetches from, so that if it
// dies another process knows which private lists to recover.
func (b *Broker) Register(ctx context.Context, queues []string) error {
	js, _ := json.Marshal(queues)
	return b.rdb.HSet(ctx, keyFetchers, b.identity, string(js)).Err()
}

// Unregister removes this process from the Busy page (SREM + UNLINK, as
// Sidekiq does at exit) and, when its private lists are empty, from the
// recovery registry. The process hash itself expires.
func (b *Broker) Unregister(ctx context.Context, queues []string) error {
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SRem(ctx, keyProcesses, b.identity)
		p.Unlink(ctx, workersKey(b.identity), workKey(b.identity), aliveKey(b.identity))
		p.HDel(ctx, keyMissingSince, b.identity)
		return nil
	})
	if err != nil {
		return fmt.Errorf("unregister: %w", err)
	}
	for _, q := range queues {
		n, err := b.rdb.LLen(ctx, inflightKey(b.identity, q)).Result()
		if err != nil || n > 0 {
			return err // leave the registration so recovery picks the rest up
		}
	}
	if n, err := b.rdb.LLen(ctx, stagingKey(b.identity)).Result(); err != nil || n > 0 {
		return err
	}
	return b.rdb.HDel(ctx, keyFetchers, b.identity).Err()
}

// Signal queues a Sidekiq signal for a process, as the Web UI does.
func (b *Broker) Signal(ctx context.Context, identity, sig string) error {
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LPush(ctx, signalsKey(identity), sig)
		p.Expire(ctx, signalsKey(identity), processTTL)
		return nil
	})
	return err
}

// ProcessAlive reports whether the ferry process identity has refreshed its
// alive key (heartbeat or fetch) within its alive TTL (20 s by default).
// Recovery takes a process's jobs only after it has been not alive for a
// further grace period (see [BrokerOptions].RecoveryGrace).
func ProcessAlive(ctx context.Context, rdb redis.UniversalClient, identity string) (bool, error) {
	n, err := rdb.Exists(ctx, aliveKey(identity)).Result()
	return n > 0, err
}

// FlushStats adds processed/failed counts to the total and daily keys.
func (b *Broker) FlushStats(ctx context.Context, processed, failed int64) error {
	if processed == 0 && failed == 0 {
		return nil
	}
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		addStats(ctx, p, b.opts.Now(), processed, failed)
		return nil
	})
	return err
}

// addStats queues Sidekiq's stat flush: processed and failed counts added
// to the total and daily keys (UTC day of now, 5-year expiry). A zero
// count writes nothing.
func addStats(ctx context.Context, p redis.Pipeliner, now time.Time, processed, failed int64) {
	day := now.UTC().Format("2006-01-02")
	addStat(ctx, p, keyStatProc, day, processed)
	addStat(ctx, p, keyStatFailed, day, failed)
}

func addStat(ctx context.Context, p redis.Pipeliner, key, day string, n int64) {
	if n <= 0 {
		return
	}
	daily := statDailyKey(key, day)
	p.IncrBy(ctx, key, n)
	p.IncrBy(ctx, daily, n)
	p.Expire(ctx, daily, statsTTL)
}
