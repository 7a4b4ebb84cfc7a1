// Command bbm benchmarks a batched background migration against the
// physical reference: a PL/pgSQL keyset loop (10k-row batches, COMMIT each,
// in a procedure) copying int to bigint on the same table, in the same run.
// It also prints GitLab's default pacing, modelled on the loop's per-row
// speed.
//
//	go run ./bench/bbm -rows 5000000         (DATABASE_URL must be set)
//	go run ./bench/bbm -rows 5000000 -load   (adds the politeness run)
//
// ferry runs with default settings through the in-process engine with
// -workers goroutines (the Sidekiq round trips of `ferry worker` add well
// under 1 ms per multi-second batch).
//
// With -load, a write load (-writers goroutines, single-row UPDATEs of
// random ids on another column of the migrated table) runs first alone for
// -baseline, then during a second ferry migration of that table; its p99
// latency in both periods and their ratio are printed (target <= 1.5x),
// and, for comparison, its latency alone again on the migrated table
// afterwards (what is left once the migration's own work is gone, plus
// drift of a shared machine). -max-duty sets HealthConfig.MaxDutyUnderLoad
// (1: no contention pacing); -only-load skips the idle comparison.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/jobs/bbm"
	"github.com/ferrymigrate/ferry/schema"
)

type options struct {
	rows, workers, parallel, writers int
	load, onlyLoad                   bool
	baseline                         time.Duration
	maxDuty                          float64
}

func main() {
	var o options
	flag.IntVar(&o.rows, "rows", 5_000_000, "rows to copy")
	flag.IntVar(&o.workers, "workers", 2, "goroutines running batches")
	flag.IntVar(&o.parallel, "parallel", 1, "batches of the migration at once (default settings: 1)")
	flag.BoolVar(&o.load, "load", false, "also measure a concurrent write load's latency without and during a migration")
	flag.IntVar(&o.writers, "writers", 4, "with -load: goroutines doing single-row UPDATEs")
	flag.Float64Var(&o.maxDuty, "max-duty", 0, "HealthConfig.MaxDutyUnderLoad (0: default; 1: no contention pacing)")
	flag.BoolVar(&o.onlyLoad, "only-load", false, "with -load: skip the idle comparison (for tuning)")
	flag.DurationVar(&o.baseline, "baseline", 15*time.Second, "with -load: how long to measure the load alone")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	rows, workers, parallel := o.rows, o.workers, o.parallel
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := schema.Apply(ctx, pool); err != nil {
		return err
	}
	prepare := func(table string) error {
		for _, q := range []string{
			`DELETE FROM batched_background_migrations WHERE table_name = '` + table + `'`,
			`DROP TABLE IF EXISTS ` + table,
			// w is the column the -load writers update.
			`CREATE TABLE ` + table + ` (id integer PRIMARY KEY, v integer NOT NULL, v_big bigint, w integer NOT NULL DEFAULT 0)`,
			fmt.Sprintf(`INSERT INTO %s SELECT g, g FROM generate_series(1, %d) g`, table, rows),
			`VACUUM ANALYZE ` + table,
			`CHECKPOINT`,
		} {
			if _, err := pool.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}
	e := bbm.NewEngine(pool, bbm.Config{Logger: zap.NewNop(), Health: bbm.HealthConfig{MaxDutyUnderLoad: o.maxDuty}})
	defer e.Close()
	if o.load && o.onlyLoad {
		return underLoad(ctx, o, url, e, prepare)
	}
	// Reference: the keyset loop inside PostgreSQL.
	if err := prepare("bench_loop"); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE OR REPLACE PROCEDURE bench_keyset_loop() LANGUAGE plpgsql AS $$
		DECLARE lo int := 0; hi int;
		BEGIN
			LOOP
				SELECT max(id) INTO hi FROM (SELECT id FROM bench_loop WHERE id > lo ORDER BY id LIMIT 10000) s;
				EXIT WHEN hi IS NULL;
				UPDATE bench_loop SET v_big = v WHERE id > lo AND id <= hi;
				COMMIT;
				lo := hi;
			END LOOP;
		END $$`); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := pool.Exec(ctx, `CALL bench_keyset_loop()`); err != nil {
		return err
	}
	loop := time.Since(t0)
	loopRate := float64(rows) / loop.Seconds()
	fmt.Printf("PL/pgSQL keyset loop: %d rows in %s = %.0f rows/s\n", rows, loop.Round(time.Millisecond), loopRate)
	gl, glBatches := gitlabPacing(rows, loopRate)
	fmt.Printf("GitLab default pacing, modelled on the loop's speed: %d rows in %s = %.0f rows/s (%d batches)\n",
		rows, gl.Round(time.Second), float64(rows)/gl.Seconds(), glBatches)

	if err := prepare("bench_ferry"); err != nil {
		return err
	}
	took, m, err := migrate(ctx, e, "bench_ferry", parallel, workers)
	if err != nil {
		return err
	}
	rate := float64(rows) / took.Seconds()
	fmt.Printf("ferry bbm (queue -> %s, default settings): %d rows in %s = %.0f rows/s (%s)\n",
		m.Status, rows, took.Round(time.Millisecond), rate, m.summary)
	fmt.Printf("ratio ferry/loop: %.2f (target >= 0.80); ferry/GitLab pacing: %.0fx\n", rate/loopRate, gl.Seconds()/took.Seconds())
	if !o.load {
		return nil
	}
	return underLoad(ctx, o, url, e, prepare)
}

// underLoad is the politeness run: the same migration on a table under a
// write load.
func underLoad(ctx context.Context, o options, url string, e *bbm.Engine, prepare func(string) error) error {
	rows, workers, parallel := o.rows, o.workers, o.parallel
	if err := prepare("bench_load"); err != nil {
		return err
	}
	wpool, err := pgxpool.New(ctx, url+sep(url)+fmt.Sprintf("pool_max_conns=%d", o.writers))
	if err != nil {
		return err
	}
	defer wpool.Close()
	ld := startLoad(ctx, wpool, "bench_load", rows, o.writers)
	// Warm up (connections, plans, caches), then measure the load alone.
	sleep(ctx, 2*time.Second)
	ld.phase(1)
	sleep(ctx, o.baseline)
	ld.phase(2)
	took, m, err := migrate(ctx, e, "bench_load", parallel, workers)
	if err == nil {
		// The load alone again, on the migrated table: what is left when
		// the migration's own work is gone (dead row versions, index
		// entries, a vacuum), and how much the machine drifted meanwhile.
		ld.phase(3)
		sleep(ctx, o.baseline)
	}
	ld.phase(0)
	ld.stop()
	if err != nil {
		return err
	}
	base, during, after := ld.stats(1), ld.stats(2), ld.stats(3)
	fmt.Printf("under load (%d writers, single-row UPDATEs of random ids, other column): ferry %d rows in %s = %.0f rows/s (%s)\n",
		o.writers, rows, took.Round(time.Millisecond), float64(rows)/took.Seconds(), m.summary)
	fmt.Printf("write load alone:      %s\n", base)
	fmt.Printf("write load, migrating: %s\n", during)
	fmt.Printf("write load, after:     %s\n", after)
	fmt.Printf("p99 ratio migrating/alone: %.2f (target <= 1.50)\n", during.p99.Seconds()/base.p99.Seconds())
	return nil
}

func sep(url string) string {
	for _, c := range url {
		if c == '?' {
			return "&"
		}
	}
	return "?"
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

type migrated struct {
	*bbm.MigrationInfo
	summary string
}

// migrate queues the copy of v into v_big on table with default settings
// and runs it to the end, timed from queue to finished.
func migrate(ctx context.Context, e *bbm.Engine, table string, parallel, workers int) (time.Duration, migrated, error) {
	pool := e.Pool()
	t0 := time.Now()
	res, err := e.Queue(ctx, bbm.QueueOptions{Class: bbm.CopyColumnClass, Table: table, Column: "id",
		Args: []byte(`[["v"],["v_big"]]`), MaxParallel: parallel})
	if err != nil {
		return 0, migrated{}, err
	}
	if err := e.RunLocal(ctx, workers, true); err != nil {
		return 0, migrated{}, err
	}
	took := time.Since(t0)
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		return 0, migrated{}, err
	}
	var bad int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE v_big IS DISTINCT FROM v`).Scan(&bad); err != nil {
		return 0, migrated{}, err
	}
	var jobs, paced int
	var minDuty, pausedS float64
	_ = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE (metrics->'pacing'->>'min_duty_cycle')::float8 < 1),
			coalesce(min((metrics->'pacing'->>'min_duty_cycle')::float8), 1), coalesce(sum((metrics->'pacing'->>'paused_s')::float8), 0)
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, m.ID).Scan(&jobs, &paced, &minDuty, &pausedS)
	if m.Status != bbm.Finished || bad != 0 {
		return 0, migrated{}, fmt.Errorf("migration of %s ended %s with %d rows not copied", table, m.Status, bad)
	}
	return took, migrated{m, fmt.Sprintf("%d batches, final batch %d, sub-batch %d, rows not copied %d; paced batches %d, lowest duty cycle %.2f, paused %.1fs",
		jobs, m.BatchSize, m.SubBatchSize, bad, paced, minDuty, pausedS)}, nil
}

// load runs single-row UPDATEs and records each one's latency under the
// phase current when it started (0: not recorded).
type load struct {
	cur    atomic.Int32
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	lat    map[int32][]time.Duration
	errs   atomic.Int64
	spans  map[int32]time.Duration // wall-clock length of each phase
	since  time.Time
}

func startLoad(ctx context.Context, pool *pgxpool.Pool, table string, rows, writers int) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, lat: map[int32][]time.Duration{}, spans: map[int32]time.Duration{}, since: time.Now()}
	for range writers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			mine := map[int32][]time.Duration{}
			for ctx.Err() == nil {
				ph := l.cur.Load()
				id := rand.IntN(rows) + 1
				t0 := time.Now()
				_, err := pool.Exec(ctx, `UPDATE `+table+` SET w = w + 1 WHERE id = $1`, id)
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() == nil {
						l.errs.Add(1)
					}
					continue
				}
				if ph != 0 && l.cur.Load() == ph {
					mine[ph] = append(mine[ph], d)
				}
			}
			l.mu.Lock()
			for k, v := range mine {
				l.lat[k] = append(l.lat[k], v...)
			}
			l.mu.Unlock()
		}()
	}
	return l
}

// phase is called from one goroutine only.
func (l *load) phase(p int32) {
	now := time.Now()
	l.spans[l.cur.Load()] += now.Sub(l.since)
	l.since = now
	l.cur.Store(p)
}

func (l *load) stop() { l.cancel(); l.wg.Wait() }

type latency struct {
	n             int
	perSec        float64
	p50, p99, max time.Duration
	errs          int64
}

func (s latency) String() string {
	return fmt.Sprintf("%d updates (%.0f/s), p50 %s, p99 %s, max %s, errors %d",
		s.n, s.perSec, s.p50.Round(time.Microsecond), s.p99.Round(time.Microsecond), s.max.Round(time.Microsecond), s.errs)
}

func (l *load) stats(p int32) latency {
	v := slices.Clone(l.lat[p])
	slices.Sort(v)
	if len(v) == 0 {
		return latency{}
	}
	q := func(f float64) time.Duration { return v[min(len(v)-1, int(math.Ceil(f*float64(len(v))))-1)] }
	return latency{n: len(v), p50: q(0.50), p99: q(0.99), max: v[len(v)-1], errs: l.errs.Load(),
		perSec: float64(len(v)) / l.spans[p].Seconds()}
}

// gitlabPacing models GitLab's defaults (batched_migration.rb,
// batch_optimizer.rb) on a table migrated at rate rows/s: a batch every
// 2-minute interval (or when the previous one ends, if later), 1,000 rows
// to start, 100-row sub-batches with 100 ms pauses between them, and the
// optimizer: no change until 20 jobs exist, then the time efficiency
// (duration / interval) smoothed over the last 20 jobs (EMA, alpha 0.4)
// and, outside 0.9..0.95, the size multiplied by min(0.95/eff, 1.2),
// clamped to 1,000..2,000,000.
func gitlabPacing(rows int, rate float64) (time.Duration, int) {
	const (
		interval = 120.0
		sub      = 100
		pause    = 0.1
		jobsN    = 20
		alpha    = 0.4
	)
	size := 1000
	var effs []float64 // newest last
	var total float64
	batches := 0
	for left := rows; left > 0; batches++ {
		n := min(size, left)
		subs := (n + sub - 1) / sub
		dur := float64(n)/rate + float64(subs-1)*pause
		total += max(interval, dur)
		left -= n
		effs = append(effs, dur/interval)
		if len(effs) < jobsN {
			continue
		}
		var num, den float64
		for i := range jobsN {
			w := math.Pow(1-alpha, float64(i))
			num += effs[len(effs)-1-i] * w
			den += w
		}
		eff := math.Round(num/den*100) / 100
		if eff == 0 || (eff >= 0.9 && eff <= 0.95) {
			continue
		}
		size = max(1000, min(int(float64(size)*min(0.95/eff, 1.2)), 2_000_000))
	}
	return time.Duration(total * float64(time.Second)), batches
}
