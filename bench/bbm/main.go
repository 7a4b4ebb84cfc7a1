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
// With -load, a write load runs first alone for -baseline, then during a
// second ferry migration of the same table, then alone again on the
// migrated table for -baseline. The load is pgbench (see load): -rate
// single-row UPDATEs per second of random ids on another column of the
// migrated table, over -writers connections, open (latency counted from
// when each was due). Its p99 latency alone and during the migration and
// their ratio are printed (target <= 1.5x); the run after shows what is
// left once the migration's own work is gone, plus the drift of a shared
// machine, so a second ratio compares against both runs alone.
// -max-duty sets HealthConfig.MaxDutyUnderLoad (1: no contention pacing);
// -max-impact sets HealthConfig.MaxLatencyImpact, and -max-impact -1 is
// the pacing before the closed loop (a fixed 2% duty cycle, 10 ms
// statements), for side-by-side runs in one session; -burst -1ns pauses
// after every sub-batch (the pacing before bursts); -ab alternates the
// defaults with both (fixed 2%, a pause after every sub-batch: the pacing
// issue 18 measures against); -only-load skips the idle comparison.
// -trace splits the load's transactions during the migration into those
// due while a sub-batch statement ran and the rest, sets the pacing
// canaries beside them, and prints the p99 rise each predicts at a few
// duties: how well the canaries stand for the load; -trace-dump FILE also
// writes them as CSV.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

type options struct {
	rows, workers, parallel, writers int
	load, onlyLoad                   bool
	baseline                         time.Duration
	maxDuty, minDuty, rate, impact   float64
	target, ab, burst                time.Duration
	// tr, with -trace, records the statements and canaries of the run
	// under load; dump, with -trace-dump, is where they go as CSV.
	tr   *trace
	dump string
}

// tracer is o.tr as the engine's Config.Trace (nil without -trace).
func (o options) tracer() batched.Tracer {
	if o.tr == nil {
		return nil
	}
	return o.tr
}

// health is the engine's pacing from the flags, with impact and burst
// given (migrateAB runs two pacings side by side).
func (o options) health(impact float64, burst time.Duration) batched.HealthConfig {
	return batched.HealthConfig{MaxDutyUnderLoad: o.maxDuty, MinDutyUnderLoad: o.minDuty, MaxLatencyImpact: impact, PaceBurst: burst}
}

func main() {
	var o options
	flag.IntVar(&o.rows, "rows", 5_000_000, "rows to copy")
	flag.IntVar(&o.workers, "workers", 2, "goroutines running batches")
	flag.IntVar(&o.parallel, "parallel", 1, "batches of the migration at once (default settings: 1)")
	flag.BoolVar(&o.load, "load", false, "also measure a concurrent write load's latency without and during a migration")
	flag.IntVar(&o.writers, "writers", 8, "with -load: pgbench clients (connections) doing single-row UPDATEs")
	flag.Float64Var(&o.rate, "rate", 1000, "with -load: UPDATEs per second, due on pgbench's schedule (0: each client sends the next as soon as the last returns)")
	flag.Float64Var(&o.maxDuty, "max-duty", 0, "HealthConfig.MaxDutyUnderLoad (0: default; 1: no contention pacing)")
	flag.Float64Var(&o.minDuty, "min-duty", 0, "HealthConfig.MinDutyUnderLoad (0: default)")
	flag.Float64Var(&o.impact, "max-impact", 0, "HealthConfig.MaxLatencyImpact (0: default; negative: no closed loop, the fixed duty cycle)")
	flag.DurationVar(&o.burst, "burst", 0, "HealthConfig.PaceBurst (0: default; negative: a pause after every sub-batch, the pacing before bursts)")
	flag.DurationVar(&o.target, "target", 0, "Config.TargetBatchDuration (0: default)")
	flag.BoolVar(&o.onlyLoad, "only-load", false, "with -load: skip the idle comparison (for tuning)")
	flag.DurationVar(&o.ab, "ab", 0, "with -load: run the migration in slices of this long, alternately with the pacing issue 18 started from (fixed 2% duty, a pause after every sub-batch) and with -max-impact and -burst, and compare the two under the same load and machine")
	flag.DurationVar(&o.baseline, "baseline", 15*time.Second, "with -load: how long to measure the load alone")
	traced := flag.Bool("trace", false, "with -load: set the load's transactions due during sub-batch statements beside the rest, and beside the pacing canaries")
	flag.StringVar(&o.dump, "trace-dump", "", "with -trace: also write the statements, the canaries and the load's transactions of the migration to this file as CSV")
	flag.Parse()
	if o.dump != "" && !*traced {
		fmt.Fprintln(os.Stderr, "bench: -trace-dump needs -trace")
		os.Exit(2)
	}
	if *traced {
		// The trace needs the load, and one batch at a time: the slices
		// of -ab's other pacing would count as time between statements,
		// and overlapping statements would be told apart wrongly.
		if !o.load || o.ab > 0 || o.parallel > 1 {
			fmt.Fprintln(os.Stderr, "bench: -trace needs -load, and goes with neither -ab nor -parallel above 1")
			os.Exit(2)
		}
		o.tr = &trace{}
	}
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
	// As ferry's own pools (exec mode), named like them, so the contention
	// signal does not count the engine's idle connections as an application.
	pool, err := config.NewPool(ctx, url+sep(url)+"application_name=ferry-bench", 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := ferryschema.Apply(ctx, pool); err != nil {
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
	e := batched.NewEngine(pool, batched.Config{Logger: zap.NewNop(), TargetBatchDuration: o.target, Health: o.health(o.impact, o.burst), Trace: o.tracer()})
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
func underLoad(ctx context.Context, o options, url string, e *batched.Engine, prepare func(string) error) error {
	rows, workers, parallel := o.rows, o.workers, o.parallel
	if err := prepare("bench_load"); err != nil {
		return err
	}
	// The idle run before wrote gigabytes the kernel may still be writing
	// back; writes block behind it, and the load's latency would measure
	// the disk, not the migration. Settle first.
	settle := time.Now()
	syscall.Sync()
	fmt.Fprintf(os.Stderr, "bench: sync took %s\n", time.Since(settle).Round(time.Millisecond))
	ld, err := startLoad(ctx, url, "bench_load", rows, o.writers, o.rate)
	if err != nil {
		return err
	}
	// Warm up (connections, plans, caches), then measure the load alone.
	sleep(ctx, 2*time.Second)
	// What else happened in each phase: time the hypervisor took from
	// this VM (steal), and autovacuum runs on the table. Either can
	// spoil a phase's p99 without the migration's doing.
	var steal [4]float64
	var vacuums [4]int64
	mark := func(i int) {
		steal[i] = stealSeconds()
		_ = e.Pool().QueryRow(ctx, `SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'bench_load'`).Scan(&vacuums[i])
	}
	ld.phase(1)
	mark(0)
	sleep(ctx, o.baseline)
	ld.phase(2)
	mark(1)
	if o.tr != nil {
		o.tr.reset() // the idle run before is not under load
	}
	var took time.Duration
	var m migrated
	var ab []abSlice
	if o.ab > 0 {
		ab, m, err = migrateAB(ctx, o, e, ld, "bench_load")
		for _, sl := range ab {
			took += sl.took
		}
	} else {
		took, m, err = migrate(ctx, e, "bench_load", parallel, workers)
	}
	mark(2)
	if err == nil {
		// The load alone again, on the migrated table: what is left when
		// the migration's own work is gone (dead row versions, index
		// entries, a vacuum), and how much the machine drifted meanwhile.
		ld.phase(3)
		sleep(ctx, o.baseline)
	}
	mark(3)
	defer func() {
		fmt.Printf("meanwhile: CPU steal %.1fs / %.1fs / %.1fs, autovacuum+autoanalyze runs on the table %d / %d / %d (alone / migrating / after)\n",
			steal[1]-steal[0], steal[2]-steal[1], steal[3]-steal[2], vacuums[1]-vacuums[0], vacuums[2]-vacuums[1], vacuums[3]-vacuums[2])
	}()
	txns, spans, lerr := ld.stop()
	if err != nil {
		return err
	}
	if lerr != nil {
		return lerr
	}
	if o.ab > 0 { // the slices of both pacings together
		txns[2] = append(slices.Clone(txns[abPhase]), txns[abPhase+1]...)
		spans[2] = spans[abPhase] + spans[abPhase+1]
	}
	lat := map[int32][]time.Duration{}
	for ph, v := range txns {
		lat[ph] = durations(v)
	}
	base, during, after := stats(lat[1], spans[1]), stats(lat[2], spans[2]), stats(lat[3], spans[3])
	both := stats(append(slices.Clone(lat[1]), lat[3]...), spans[1]+spans[3])
	kind := fmt.Sprintf("pgbench -R %.0f -c %d: UPDATEs due on a schedule, latency from when due", o.rate, o.writers)
	if o.rate <= 0 {
		kind = fmt.Sprintf("pgbench -c %d: back to back", o.writers)
	}
	fmt.Printf("under load (%s; single-row UPDATEs of random ids, other column): ferry %d rows in %s = %.0f rows/s (%s)\n",
		kind, rows, took.Round(time.Millisecond), float64(rows)/took.Seconds(), m.summary)
	fmt.Printf("write load alone:      %s\n", base)
	fmt.Printf("write load, migrating: %s\n", during)
	fmt.Printf("write load, after:     %s\n", after)
	fmt.Printf("p99 ratio migrating/alone: %.2f (target <= 1.50); migrating/(alone before and after): %.2f\n",
		during.p99.Seconds()/base.p99.Seconds(), during.p99.Seconds()/both.p99.Seconds())
	if o.tr != nil {
		o.tr.report(txns[2])
		if o.dump != "" {
			if err := o.tr.dump(o.dump, txns[2]); err != nil {
				return err
			}
		}
	}
	if o.ab > 0 {
		// The two pacings took turns on the same migration, table, load
		// and machine: whatever else the machine did fell on both.
		var rows [2]int64
		var dur [2]time.Duration
		for _, sl := range ab {
			rows[sl.mode] += sl.rows
			dur[sl.mode] += sl.took
		}
		for mode, name := range []string{"before the closed loop (fixed 2%)", "closed loop (default)"} {
			st := stats(lat[abPhase+int32(mode)], spans[abPhase+int32(mode)])
			fmt.Printf("A/B %-34s %8d rows in %6s = %6.0f rows/s; write load %s; p99 vs alone %.2f / pooled %.2f\n", name+":", rows[mode],
				dur[mode].Round(time.Second), float64(rows[mode])/dur[mode].Seconds(), st, st.p99.Seconds()/base.p99.Seconds(), st.p99.Seconds()/both.p99.Seconds())
		}
		fmt.Printf("A/B rows/s closed loop / fixed 2%%: %.2f\n", float64(rows[1])/dur[1].Seconds()/(float64(rows[0])/dur[0].Seconds()))
	}
	return nil
}

// abPhase and abPhase+1 are the load phases of the A/B slices.
const abPhase = 4

type abSlice struct {
	mode int // 0: the pacing before the closed loop, 1: the closed loop
	rows int64
	took time.Duration
}

// migrateAB queues the copy and runs it in slices of o.ab, alternately
// by an engine with the fixed duty cycle and one with the closed loop
// (each keeps its own pacing state from slice to slice), marking the
// load's phases so each slice's latencies count for its pacing.
func migrateAB(ctx context.Context, o options, e *batched.Engine, ld *load, table string) ([]abSlice, migrated, error) {
	pool := e.Pool()
	engines := [2]*batched.Engine{
		batched.NewEngine(pool, batched.Config{Logger: zap.NewNop(), TargetBatchDuration: o.target, Health: o.health(-1, -1)}),
		batched.NewEngine(pool, batched.Config{Logger: zap.NewNop(), TargetBatchDuration: o.target, Health: o.health(o.impact, o.burst)}),
	}
	defer engines[0].Close()
	defer engines[1].Close()
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: table, Column: "id",
		Args: []byte(`[["v"],["v_big"]]`), MaxParallel: o.parallel})
	if err != nil {
		return nil, migrated{}, err
	}
	id := res.Migration.ID
	done := func() (int64, error) {
		var n int64
		err := pool.QueryRow(ctx, `SELECT coalesce(sum(rows_done), 0) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, id).Scan(&n)
		return n, err
	}
	var out []abSlice
	for i := 0; ; i++ {
		mode := i % 2
		before, err := done()
		if err != nil {
			return nil, migrated{}, err
		}
		ld.phase(abPhase + int32(mode))
		t0 := time.Now()
		sctx, cancel := context.WithTimeout(ctx, o.ab)
		err = engines[mode].RunLocal(sctx, o.workers, true)
		finished := sctx.Err() == nil
		cancel()
		took := time.Since(t0)
		if err != nil && !finished && ctx.Err() == nil {
			err = nil // the slice ended
		}
		if err != nil {
			return nil, migrated{}, err
		}
		after, err := done()
		if err != nil {
			return nil, migrated{}, err
		}
		out = append(out, abSlice{mode: mode, rows: after - before, took: took})
		if finished {
			break
		}
	}
	ld.phase(2)
	m, err := e.Get(ctx, id)
	if err != nil {
		return nil, migrated{}, err
	}
	var bad int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE v_big IS DISTINCT FROM v`).Scan(&bad); err != nil {
		return nil, migrated{}, err
	}
	if m.Status != batched.Finished || bad != 0 {
		return nil, migrated{}, fmt.Errorf("migration of %s ended %s with %d rows not copied", table, m.Status, bad)
	}
	return out, migrated{m, fmt.Sprintf("%d slices of %s, rows not copied %d", len(out), o.ab, bad)}, nil
}

// stealSeconds is the CPU time the hypervisor took from this machine so
// far (/proc/stat, all CPUs; 0 where it cannot be read).
func stealSeconds() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	v, _ := strconv.ParseFloat(f[8], 64)
	return v / 100 // USER_HZ
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

type migrated struct {
	*batched.MigrationInfo
	summary string
}

// migrate queues the copy of v into v_big on table with default settings
// and runs it to the end, timed from queue to finished.
func migrate(ctx context.Context, e *batched.Engine, table string, parallel, workers int) (time.Duration, migrated, error) {
	pool := e.Pool()
	t0 := time.Now()
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: table, Column: "id",
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
	var jobs, paced, blocked, canaries, vacuumed int
	var minDuty, maxDuty, pausedS, minCap float64
	var impacts string
	_ = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE (metrics->'pacing'->>'min_duty_cycle')::float8 < 1
			OR (metrics->'pacing'->>'min_stmt_cap_ms')::float8 > 0),
			coalesce(min((metrics->'pacing'->>'min_duty_cycle')::float8), 1), coalesce(sum((metrics->'pacing'->>'paused_s')::float8), 0),
			coalesce(sum((metrics->'pacing'->>'blocked_sessions')::int), 0), coalesce(min((metrics->'pacing'->>'min_stmt_cap_ms')::float8), 0),
			coalesce(max((metrics->'pacing'->>'max_duty_cycle')::float8), 0), coalesce(sum((metrics->'pacing'->>'canaries')::int), 0),
			coalesce(string_agg(round(100 * (metrics->'pacing'->>'others_p99_impact')::numeric)::text || '%', ' ' ORDER BY id), ''),
			count(*) FILTER (WHERE (metrics->'pacing'->>'vacuum')::bool)
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, m.ID).Scan(&jobs, &paced, &minDuty, &pausedS, &blocked, &minCap, &maxDuty, &canaries, &impacts, &vacuumed)
	if m.Status != batched.Finished || bad != 0 {
		return 0, migrated{}, fmt.Errorf("migration of %s ended %s with %d rows not copied", table, m.Status, bad)
	}
	return took, migrated{m, fmt.Sprintf("%d batches, final batch %d, sub-batch %d, rows not copied %d; paced batches %d, duty cycle %.3f-%.3f, paused %.1fs, sessions blocked %d, shortest statement cap %.1fms; batches that saw a VACUUM on the table %d; canaries %d, predicted p99 impact per batch: %s",
		jobs, m.BatchSize, m.SubBatchSize, bad, paced, minDuty, maxDuty, pausedS, blocked, minCap, vacuumed, canaries, impacts)}, nil
}

// load is the write load: pgbench, PostgreSQL's own benchmark client, in
// chunks of chunk seconds run back to back, each transaction logged (-l).
// With a rate (-R) the load is open: transactions are due on a schedule,
// like an application's requests, whatever the database does, and each
// one's latency counts from when it was due (pgbench logs it so: with -R
// its time runs from the scheduled start and already holds the schedule
// lag; never less than the lag in 59,578 logged transactions), so waiting
// for a free connection counts too. Until session 11 the lag was added
// a second time. Without a
// rate each client sends the next as soon as the last returns: a stress
// test that keeps the machine's cores busy by itself. It runs in its own
// process, so the engine's goroutines do not share its scheduler.
// Transactions are assigned to the phase (marked with phase) in which they
// were due.
type load struct {
	cancel context.CancelFunc
	done   chan error
	dir    string
	mu     sync.Mutex
	marks  []mark // phase changes, in order
}

type mark struct {
	at time.Time
	ph int32
}

const loadChunk = 5 // seconds per pgbench run

func startLoad(ctx context.Context, url, table string, rows, clients int, rate float64) (*load, error) {
	bin, err := pgbench()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ferry-bench-load-")
	if err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "update.sql")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE %s SET w = w + 1 WHERE id = :id;\n", rows, table)), 0o600); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, done: make(chan error, 1), dir: dir, marks: []mark{{time.Now(), 0}}}
	go func() {
		var err error
		for i := 0; ctx.Err() == nil; i++ {
			args := []string{"-n", "-f", script, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
				"-T", strconv.Itoa(loadChunk), "-l", "--log-prefix", filepath.Join(dir, fmt.Sprintf("chunk%04d", i))}
			if rate > 0 {
				args = append(args, "-R", strconv.FormatFloat(rate, 'f', -1, 64))
			}
			// Not CommandContext: a chunk always runs to its end, so its
			// log is complete (pgbench writes it on exit).
			out, cerr := exec.Command(bin, append(args, url)...).CombinedOutput()
			if cerr != nil {
				err = fmt.Errorf("pgbench: %v: %s", cerr, out)
				break
			}
		}
		l.done <- err
	}()
	return l, nil
}

// pgbench finds the pgbench binary: on PATH or in Debian's PostgreSQL
// directories.
func pgbench() (string, error) {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	if len(found) == 0 {
		return "", fmt.Errorf("-load needs pgbench (Debian: postgresql-client or the server package)")
	}
	slices.Sort(found)
	return found[len(found)-1], nil
}

func (l *load) phase(p int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.marks = append(l.marks, mark{time.Now(), p})
}

// txn is one of the load's transactions: when it was due and how long it
// took from then.
type txn struct {
	due time.Time
	d   time.Duration
}

func durations(v []txn) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = x.d
	}
	return out
}

// stop ends the load after the running chunk and reads its logs.
func (l *load) stop() (map[int32][]txn, map[int32]time.Duration, error) {
	l.phase(0)
	l.cancel()
	err := <-l.done
	defer os.RemoveAll(l.dir)
	if err != nil {
		return nil, nil, err
	}
	spans := map[int32]time.Duration{}
	for i := 1; i < len(l.marks); i++ {
		spans[l.marks[i-1].ph] += l.marks[i].at.Sub(l.marks[i-1].at)
	}
	phaseAt := func(t time.Time) int32 {
		i, _ := slices.BinarySearchFunc(l.marks, t, func(m mark, t time.Time) int { return m.at.Compare(t) })
		if i == 0 || i == len(l.marks) {
			return 0 // before the first mark or after the last
		}
		return l.marks[i-1].ph
	}
	lat := map[int32][]txn{}
	files, _ := filepath.Glob(filepath.Join(l.dir, "chunk*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		// client_id tx_no time_us script_no epoch_s epoch_us [schedule_lag_us];
		// time_us runs from when the transaction was due.
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 6 {
				continue
			}
			us, _ := strconv.ParseInt(fs[2], 10, 64)
			sec, _ := strconv.ParseInt(fs[4], 10, 64)
			usec, _ := strconv.ParseInt(fs[5], 10, 64)
			d := time.Duration(us) * time.Microsecond
			due := time.Unix(sec, usec*1000).Add(-d)
			if ph := phaseAt(due); ph != 0 {
				lat[ph] = append(lat[ph], txn{due, d})
			}
		}
	}
	return lat, spans, nil
}

type latency struct {
	n                        int
	perSec                   float64
	p50, p90, p99, p999, max time.Duration
}

func (s latency) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("%d updates (%.0f/s), p50 %s, p90 %s, p99 %s, p99.9 %s, max %s",
		s.n, s.perSec, r(s.p50), r(s.p90), r(s.p99), r(s.p999), r(s.max))
}

func stats(v []time.Duration, span time.Duration) latency {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v) == 0 {
		return latency{}
	}
	q := func(f float64) time.Duration { return v[min(len(v)-1, int(math.Ceil(f*float64(len(v))))-1)] }
	return latency{n: len(v), p50: q(0.50), p90: q(0.90), p99: q(0.99), p999: q(0.999), max: v[len(v)-1],
		perSec: float64(len(v)) / span.Seconds()}
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

func sep(url string) string {
	if strings.Contains(url, "?") {
		return "&"
	}
	return "?"
}
