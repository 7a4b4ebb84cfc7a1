package sidekiq

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TTLs of the metrics keys, as Sidekiq sets them on every flush.
const (
	metricsMinuteTTL    = 8 * time.Hour      // 7.x and 8.x minute hashes (SHORT_TERM)
	metricsTenMinuteTTL = 3 * 24 * time.Hour // 8.x ten-minute hashes (MID_TERM)
	histogramTTL        = 8 * time.Hour      // both histograms (HISTOGRAM_TTL)
)

// histogramBounds are the exclusive upper bounds, in ms, of Sidekiq's
// histogram buckets (metrics/shared.rb BUCKET_INTERVALS, the same in 7.x
// and 8.x); a 26th bucket holds the rest.
var histogramBounds = [...]int64{
	20, 30, 45, 65, 100,
	150, 225, 335, 500, 750,
	1100, 1700, 2500, 3800, 5750,
	8500, 13000, 20000, 30000, 45000,
	65000, 100000, 150000, 225000, 335000,
}

const histogramBuckets = len(histogramBounds) + 1

func histogramBucket(ms int64) int {
	for i, b := range histogramBounds {
		if ms < b {
			return i
		}
	}
	return len(histogramBounds)
}

// ExecMetrics accumulates, per job class, what Sidekiq's execution tracker
// counts between flushes: executions, failures, and the time and
// histogram of the successful ones (failed jobs' times are not counted,
// as in Sidekiq). Safe for concurrent use.
type ExecMetrics struct {
	mu      sync.Mutex
	classes map[string]*classMetrics
}

type classMetrics struct {
	processed, failed, ms int64
	hist                  [histogramBuckets]int64
}

// NewExecMetrics returns an empty accumulator.
func NewExecMetrics() *ExecMetrics { return &ExecMetrics{classes: map[string]*classMetrics{}} }

// Record counts one execution of j that took d. Like Sidekiq, it files the
// job under its "wrapped" class (ActiveJob) or else its class.
func (m *ExecMetrics) Record(j *Job, d time.Duration, failed bool) {
	class := metricsClass(j)
	ms := d.Milliseconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.classes[string(class)] // no allocation: it runs for every job
	if c == nil {
		c = &classMetrics{}
		m.classes[string(class)] = c
	}
	c.processed++
	if failed {
		c.failed++
		return
	}
	c.ms += ms
	c.hist[histogramBucket(ms)]++
}

// metricsClass is the raw name of j's "wrapped" class, else its "class".
func metricsClass(j *Job) []byte {
	for _, key := range [...]string{"wrapped", "class"} {
		v := j.Get(key)
		switch {
		case len(v) < 3 || v[0] != '"':
			continue
		case bytes.IndexByte(v, '\\') < 0:
			return v[1 : len(v)-1]
		}
		if s, err := unquote(v); err == nil && s != "" {
			return []byte(s)
		}
	}
	return nil
}

// take empties the accumulator and returns what it held.
func (m *ExecMetrics) take() map[string]*classMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.classes
	m.classes = make(map[string]*classMetrics, len(out))
	return out
}

// restore adds counts whose flush failed back, for the next flush.
func (m *ExecMetrics) restore(cs map[string]*classMetrics) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for class, c := range cs {
		cur := m.classes[class]
		if cur == nil {
			m.classes[class] = c
			continue
		}
		cur.processed += c.processed
		cur.failed += c.failed
		cur.ms += c.ms
		for i, n := range c.hist {
			cur.hist[i] += n
		}
	}
}

// FlushMetrics writes what m accumulated to the keys Sidekiq 7.x and 8.x
// Metrics pages read (see metricsMinuteKey7), in the current minute, with
// Sidekiq's TTLs. If the write fails, the counts stay in m for the next
// flush.
func (b *Broker) FlushMetrics(ctx context.Context, m *ExecMetrics) error {
	cs := m.take()
	if len(cs) == 0 {
		return nil
	}
	now := b.opts.Now()
	_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, h := range []struct {
			key string
			ttl time.Duration
		}{
			{metricsMinuteKey7(now), metricsMinuteTTL},
			{metricsMinuteKey8(now), metricsMinuteTTL},
			{metricsTenMinuteKey8(now), metricsTenMinuteTTL},
		} {
			for class, c := range cs {
				addClassCounts(ctx, p, h.key, class, c)
			}
			p.Expire(ctx, h.key, h.ttl)
		}
		for class, c := range cs {
			if c.processed > c.failed {
				addHistogram(ctx, p, histogramKey7(class, now), c)
				addHistogram(ctx, p, histogramKey8(class, now), c)
			}
		}
		return nil
	})
	if err != nil {
		m.restore(cs)
		return fmt.Errorf("flush metrics: %w", err)
	}
	return nil
}

// addClassCounts adds a class's fields to one "j|" hash; like Sidekiq it
// writes "|f" only for failures and "|ms" only for successes.
func addClassCounts(ctx context.Context, p redis.Pipeliner, key, class string, c *classMetrics) {
	fp, ff, fms := metricsFields(class)
	p.HIncrBy(ctx, key, fp, c.processed)
	if c.failed > 0 {
		p.HIncrBy(ctx, key, ff, c.failed)
	}
	if c.processed > c.failed {
		p.HIncrBy(ctx, key, fms, c.ms)
	}
}

// addHistogram adds the non-empty buckets to a histogram: unsigned 16-bit
// counters #0..#25 that saturate rather than wrap.
func addHistogram(ctx context.Context, p redis.Pipeliner, key string, c *classMetrics) {
	args := []any{"OVERFLOW", "SAT"}
	for i, n := range c.hist {
		if n > 0 {
			args = append(args, "INCRBY", "u16", "#"+strconv.Itoa(i), n)
		}
	}
	p.BitField(ctx, key, args...)
	p.Expire(ctx, key, histogramTTL)
}
