package web

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Collector exports ferry's state to Prometheus at scrape time: GitLab's
// batched migration metrics (gitlab-background-migrations.md §3.11) read
// from PostgreSQL, and Sidekiq/worker metrics read from Redis. Reading the
// shared state, rather than counting in-process, means any `ferry web`
// reports the whole cluster, and no metric is lost when a worker dies.
type Collector struct {
	rdb    redis.UniversalClient
	stores []*store // one per database; none: no database
	log    *zap.Logger
	// timeout bounds one scrape so a slow database cannot pile up scrapes.
	timeout time.Duration
	// multi: several databases, so migration series carry GitLab's
	// db_config_name label (ids repeat across databases). With one, the
	// series stay as they were, so existing dashboards keep matching.
	multi bool

	mu   sync.Mutex
	hist map[string]*queryHistograms // by database

	batchSize, subBatchSize, interval, duration, migrated, total, lastUpdate, updated *prometheus.Desc
	status, progress, rowsPerSec, eta, failedJobs, state                              *prometheus.Desc
	queryDur                                                                          *prometheus.Desc

	processed, failed, busy, threads, processes, queueSize, queueLatency *prometheus.Desc
	setSize, inflight, recoveries, up                                    *prometheus.Desc
}

// NewCollector returns a collector; db or rdb may be nil to leave their
// metrics out. Migrations are read through the engine's read model
// ([batched.Engine.List]), as the pages and `ferry bbm status` read them.
func NewCollector(db *pgxpool.Pool, rdb redis.UniversalClient, log *zap.Logger) *Collector {
	var stores []*store
	if db != nil {
		stores = append(stores, &store{e: batched.NewEngine(db, batched.Config{Logger: log}), db: batched.DefaultDatabase})
	}
	return newCollector(stores, rdb, log)
}

func newCollector(stores []*store, rdb redis.UniversalClient, log *zap.Logger) *Collector {
	if log == nil {
		log = zap.NewNop()
	}
	c := &Collector{rdb: rdb, log: log, timeout: 10 * time.Second, stores: stores, multi: len(stores) > 1, hist: map[string]*queryHistograms{}}
	for _, st := range stores {
		c.hist[st.db] = &queryHistograms{byKey: map[histKey]*histogram{}, seen: map[int64]struct{}{}}
	}
	migLabels := []string{"migration_id", "migration_identifier"}
	if c.multi {
		migLabels = append(migLabels, "db_config_name")
	}
	migLabels = slices.Clip(migLabels) // each append below gets its own array
	g := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	c.batchSize = g("batched_migration_job_batch_size", "Batch size of the migration's latest batch.", migLabels...)
	c.subBatchSize = g("batched_migration_job_sub_batch_size", "Sub-batch size of the migration.", migLabels...)
	c.interval = g("batched_migration_job_interval_seconds", "Minimum seconds between batches of the migration.", migLabels...)
	c.duration = g("batched_migration_job_duration_seconds", "Duration of the migration's latest finished batch.", migLabels...)
	c.migrated = g("batched_migration_migrated_tuples_total", "Rows migrated so far (committed rows, the progress numerator).", migLabels...)
	c.total = g("batched_migration_total_tuple_count", "Estimated tuples to migrate (table statistics at enqueue).", migLabels...)
	c.lastUpdate = g("batched_migration_last_update_time_seconds", "Unix time the latest batch finished.", migLabels...)
	c.updated = g("batched_migration_job_updated_tuples_total", "Rows updated by batches (committed rows).", migLabels...)
	c.status = g("ferry_batched_migration_status", "Migration status code (0 paused, 1 active, 3 finished, 4 failed, 5 finalizing, 6 finalized).", migLabels...)
	c.progress = g("ferry_batched_migration_progress_ratio", "Progress between 0 and 1, as `ferry bbm status` shows it (absent when unknown).", migLabels...)
	c.rowsPerSec = g("ferry_batched_migration_rows_per_second", "Wall-clock rows per second over the recent batches (0 when not moving).", migLabels...)
	c.eta = g("ferry_batched_migration_eta_seconds", "Estimated seconds to completion (absent when not moving or unknown).", migLabels...)
	c.state = g("ferry_batched_migration_state", "1 for the migration's state (running, paced, paused, paused_all, on_hold, stalled, failed, ...), as `ferry bbm show` says it.", append(migLabels, "state")...)
	c.failedJobs = g("ferry_batched_migration_failed_jobs", "Batches currently failed.", migLabels...)
	c.queryDur = g("batched_migration_job_query_duration_seconds", "Duration of the queries of finished batches, from their metrics.timings.", append(migLabels, "operation")...)

	c.processed = g("ferry_jobs_processed_total", "Sidekiq jobs processed (stat:processed), all processes.")
	c.failed = g("ferry_jobs_failed_total", "Sidekiq jobs failed (stat:failed), all processes.")
	c.busy = g("ferry_workers_busy", "Jobs running now, summed over live processes.")
	c.threads = g("ferry_workers_concurrency", "Job slots, summed over live processes.")
	c.processes = g("ferry_processes", "Live worker processes (Ruby Sidekiq and ferry).")
	c.queueSize = g("ferry_queue_size", "Jobs waiting in a queue.", "queue")
	c.queueLatency = g("ferry_queue_latency_seconds", "Seconds the oldest job of a queue has waited.", "queue")
	c.setSize = g("ferry_set_size", "Entries of the schedule, retry and dead sets.", "set")
	c.inflight = g("ferry_jobs_inflight", "Jobs fetched by ferry processes and not yet acknowledged.")
	c.recoveries = g("ferry_fetch_recoveries_total", "Jobs pushed back to their queue after their worker died.")
	upLabels := []string{"source"}
	if c.multi { // one postgres series per database (redis: db_config_name "")
		upLabels = append(upLabels, "db_config_name")
	}
	c.up = g("ferry_scrape_source_up", "1 if the source could be read at this scrape.", upLabels...)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.batchSize, c.subBatchSize, c.interval, c.duration, c.migrated, c.total,
		c.lastUpdate, c.updated, c.status, c.progress, c.rowsPerSec, c.eta, c.failedJobs, c.state, c.queryDur,
		c.processed, c.failed, c.busy, c.threads, c.processes, c.queueSize, c.queueLatency, c.setSize,
		c.inflight, c.recoveries, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	for _, st := range c.stores {
		up := 1.0
		// One database that cannot be read leaves the others' series.
		if err := c.collectMigrations(ctx, ch, st); err != nil {
			c.log.Warn("metrics: read migrations", zap.String("database", st.db), zap.Error(err))
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, c.upLabels("postgres", st.db)...)
	}
	if c.rdb != nil {
		up := 1.0
		if err := c.collectRedis(ctx, ch); err != nil {
			c.log.Warn("metrics: read redis", zap.Error(err))
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, c.upLabels("redis", "")...)
	}
}

func (c *Collector) collectMigrations(ctx context.Context, ch chan<- prometheus.Metric, st *store) error {
	ms, err := st.All(ctx)
	if err != nil {
		return err
	}
	idents := map[int64]string{}
	for _, m := range ms {
		l := c.labels(st, m.ID, m.Identifier())
		idents[m.ID] = m.Identifier()
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
		}
		batch := m.BatchSize
		if lb := m.LastBatch; lb != nil {
			batch = int64(lb.BatchSize)
			gauge(c.duration, lb.Duration)
			gauge(c.lastUpdate, float64(lb.FinishedAt.UnixNano())/1e9)
		}
		gauge(c.batchSize, float64(batch))
		gauge(c.subBatchSize, float64(m.SubBatchSize))
		gauge(c.interval, float64(m.Interval))
		gauge(c.migrated, float64(m.RowsDone))
		if m.TotalTupleCount != nil {
			gauge(c.total, float64(*m.TotalTupleCount))
		}
		ch <- prometheus.MustNewConstMetric(c.updated, prometheus.CounterValue, float64(m.RowsDone), l...)
		gauge(c.status, float64(m.Status))
		gauge(c.failedJobs, float64(m.FailedJobs))
		gauge(c.rowsPerSec, m.Progress.RowsPerSec)
		if m.Progress.Percent >= 0 {
			gauge(c.progress, m.Progress.Percent/100)
		}
		if m.Progress.HasETA {
			gauge(c.eta, m.Progress.ETA.Seconds())
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, 1, append(l, m.Progress.Class)...)
	}
	return c.collectQueryDurations(ctx, ch, st, idents)
}

// upLabels are ferry_scrape_source_up's labels for source (and database
// db of several).
func (c *Collector) upLabels(source, db string) []string {
	if c.multi {
		return []string{source, db}
	}
	return []string{source}
}

// labels are a migration series' labels, with db_config_name when there
// are several databases.
func (c *Collector) labels(st *store, id int64, ident string, extra ...string) []string {
	l := []string{strconv.FormatInt(id, 10), ident}
	if c.multi {
		l = append(l, st.db)
	}
	return append(l, extra...)
}

// queryBuckets are GitLab's buckets for the query duration histogram.
var queryBuckets = []float64{0.1, 0.25, 0.5, 1, 5}

type histKey struct {
	migration int64
	operation string
}

type histogram struct {
	count   uint64
	sum     float64
	buckets []uint64 // cumulative, one per queryBuckets
}

// queryHistograms accumulates the timings of finished batches. A counter
// must never go down, so instead of re-reading every job at each scrape
// (costly with millions of batches) it keeps a watermark: every finished
// job with id <= watermark has been counted, and seen holds the counted
// ids above it (jobs finish out of id order).
type queryHistograms struct {
	watermark int64
	seen      map[int64]struct{}
	byKey     map[histKey]*histogram
}

// maxJobsPerScrape bounds the catch-up work of one scrape after a start.
const maxJobsPerScrape = 5000

func (c *Collector) collectQueryDurations(ctx context.Context, ch chan<- prometheus.Metric, st *store, idents map[int64]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hist[st.db]
	jobs, oldestOpen, err := st.e.FinishedTimings(ctx, h.watermark, maxJobsPerScrape)
	if err != nil {
		return translate(err)
	}
	var maxSeen int64
	for _, j := range jobs {
		maxSeen = j.JobID
		if _, dup := h.seen[j.JobID]; dup {
			continue
		}
		h.seen[j.JobID] = struct{}{}
		for op, vals := range j.Timings {
			k := histKey{j.MigrationID, op}
			hg := h.byKey[k]
			if hg == nil {
				hg = &histogram{buckets: make([]uint64, len(queryBuckets))}
				h.byKey[k] = hg
			}
			for _, v := range vals {
				hg.count++
				hg.sum += v
				for i, b := range queryBuckets {
					if v <= b {
						hg.buckets[i]++
					}
				}
			}
		}
	}
	// Advance the watermark to just below the oldest unfinished job (or
	// the last row read if we hit the page limit), and forget seen ids
	// below it.
	next := maxSeen
	if len(jobs) < maxJobsPerScrape {
		if oldestOpen != nil {
			next = *oldestOpen - 1
		}
	}
	if oldestOpen != nil {
		next = min(next, *oldestOpen-1)
	}
	if next > h.watermark {
		h.watermark = next
		for id := range h.seen {
			if id <= next {
				delete(h.seen, id)
			}
		}
	}
	keys := make([]histKey, 0, len(h.byKey))
	for k := range h.byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].migration != keys[b].migration {
			return keys[a].migration < keys[b].migration
		}
		return keys[a].operation < keys[b].operation
	})
	for _, k := range keys {
		hg := h.byKey[k]
		b := make(map[float64]uint64, len(queryBuckets))
		for i, ub := range queryBuckets {
			b[ub] = hg.buckets[i]
		}
		ident := idents[k.migration]
		ch <- prometheus.MustNewConstHistogram(c.queryDur, hg.count, hg.sum, b, c.labels(st, k.migration, ident, k.operation)...)
	}
	return nil
}

func (c *Collector) collectRedis(ctx context.Context, ch chan<- prometheus.Metric) error {
	sk := &sidekiqView{rdb: c.rdb, now: time.Now}
	st, err := sk.Stats(ctx)
	if err != nil {
		return err
	}
	ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(st.Processed))
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(st.Failed))
	for name, v := range map[string]int64{"schedule": st.Scheduled, "retry": st.Retries, "dead": st.Dead} {
		ch <- prometheus.MustNewConstMetric(c.setSize, prometheus.GaugeValue, float64(v), name)
	}
	procs, err := sk.Processes(ctx)
	if err != nil {
		return err
	}
	var busy, threads int
	for _, p := range procs {
		busy += p.Busy
		threads += p.Concurrency
	}
	ch <- prometheus.MustNewConstMetric(c.busy, prometheus.GaugeValue, float64(busy))
	ch <- prometheus.MustNewConstMetric(c.threads, prometheus.GaugeValue, float64(threads))
	ch <- prometheus.MustNewConstMetric(c.processes, prometheus.GaugeValue, float64(len(procs)))
	qs, err := sk.Queues(ctx)
	if err != nil {
		return err
	}
	for _, q := range qs {
		ch <- prometheus.MustNewConstMetric(c.queueSize, prometheus.GaugeValue, float64(q.Size), q.Name)
		ch <- prometheus.MustNewConstMetric(c.queueLatency, prometheus.GaugeValue, q.Latency, q.Name)
	}
	rec, err := sidekiq.RecoveredTotal(ctx, c.rdb)
	if err != nil {
		return fmt.Errorf("read recoveries: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(c.recoveries, prometheus.CounterValue, float64(rec))
	inflight, err := sidekiq.InFlightTotal(ctx, c.rdb)
	if err != nil {
		return fmt.Errorf("count in-flight jobs: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(inflight))
	return nil
}
