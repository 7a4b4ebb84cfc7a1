// Command eta measures how far the ETA that `ferry bbm status` shows is
// from the time the migration actually took to finish, at 10%, 30% and
// 60% progress, on an idle database and under a steady pgbench write load.
//
//	go run ./bench/eta -rows 2000000                 (idle; DATABASE_URL must be set)
//	go run ./bench/eta -rows 500000 -load -rate 500  (under 500 UPDATEs/s)
//
// It queues the copy of an int column into a bigint one with default
// settings, runs it with -workers goroutines of the in-process engine (as
// `ferry worker` processes would), and reads the read model (the one
// behind `bbm status --json`, the web UI and /metrics) every -every. When
// the migration has finished, the actual time left at each sample is
// known: the error is ETA shown / actual left - 1. It also prints the
// largest jump of the ETA between two samples beyond the time that passed
// (smoothness), as a share of the ETA before.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

type options struct {
	rows, workers, writers int
	load                   bool
	rate                   float64
	every                  time.Duration
	runs                   int
	trace                  string
}

func main() {
	var o options
	flag.IntVar(&o.rows, "rows", 2_000_000, "rows to copy")
	flag.IntVar(&o.workers, "workers", 2, "goroutines running batches")
	flag.BoolVar(&o.load, "load", false, "run a pgbench write load during the migration")
	flag.IntVar(&o.writers, "writers", 4, "with -load: pgbench clients")
	flag.Float64Var(&o.rate, "rate", 500, "with -load: UPDATEs per second (pgbench -R)")
	flag.DurationVar(&o.every, "every", 250*time.Millisecond, "how often the ETA is read")
	flag.IntVar(&o.runs, "runs", 1, "migrations in a row (a fresh table each)")
	flag.StringVar(&o.trace, "trace", "", "write every read (seconds left, percent, ETA, state, batch size) to this file")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sample struct {
	at      time.Time
	left    time.Duration // actual time left, known at the end
	percent float64
	eta     *float64
	state   batched.State
	batch   int
	rate    float64
	raw     []byte // the read model's JSON, printed around a jump
	oldETA  *float64
}

func run(ctx context.Context, o options) error {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	pool, err := config.NewPool(ctx, url+sep(url)+"application_name=ferry-bench", 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := ferryschema.Apply(ctx, pool); err != nil {
		return err
	}
	const table = "bench_eta"
	for r := 1; r <= o.runs; r++ {
		for _, q := range []string{
			`DELETE FROM batched_background_migrations WHERE table_name = '` + table + `'`,
			`DROP TABLE IF EXISTS ` + table,
			`CREATE TABLE ` + table + ` (id integer PRIMARY KEY, v integer NOT NULL, v_big bigint, w integer NOT NULL DEFAULT 0)`,
			fmt.Sprintf(`INSERT INTO %s SELECT g, g FROM generate_series(1, %d) g`, table, o.rows),
			`VACUUM ANALYZE ` + table,
			`CHECKPOINT`,
		} {
			if _, err := pool.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		var stop func() error
		if o.load {
			stop, err = startLoad(url, table, o.rows, o.writers, o.rate)
			if err != nil {
				return err
			}
			time.Sleep(3 * time.Second) // warm up, and let ferry's signal see the load
		}
		e := batched.NewEngine(pool, batched.Config{Logger: zap.NewNop()})
		oo := o
		if o.trace != "" && o.runs > 1 {
			oo.trace = fmt.Sprintf("%s.%d", o.trace, r)
		}
		samples, took, err := migrate(ctx, e, table, oo)
		e.Close()
		if stop != nil {
			if lerr := stop(); err == nil && lerr != nil {
				err = lerr
			}
		}
		if err != nil {
			return err
		}
		report(o, r, samples, took)
	}
	return nil
}

func migrate(ctx context.Context, e *batched.Engine, table string, o options) ([]sample, time.Duration, error) {
	t0 := time.Now()
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: table, Column: "id",
		Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil {
		return nil, 0, err
	}
	done := make(chan error, 1)
	go func() { done <- e.RunLocal(ctx, o.workers, true) }()
	var samples []sample
	tick := time.NewTicker(o.every)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, 0, err
			}
			end := time.Now()
			m, err := e.Get(ctx, res.Migration.ID)
			if err != nil {
				return nil, 0, err
			}
			if m.Status != batched.Finished || m.FinishedAt == nil {
				return nil, 0, fmt.Errorf("migration ended %s", m.Status)
			}
			if m.LastBatch != nil {
				fmt.Printf("  last batch finished %s before the migration was marked finished, %s before the engine returned\n",
					m.FinishedAt.Sub(m.LastBatch.FinishedAt).Round(time.Millisecond), end.Sub(m.LastBatch.FinishedAt).Round(time.Millisecond))
			}
			if o.trace != "" {
				var b strings.Builder
				for _, s := range samples {
					eta := -1.0
					if s.eta != nil {
						eta = *s.eta
					}
					fmt.Fprintf(&b, "%.2f %.2f %.1f %s %d %.0f\n", end.Sub(s.at).Seconds(), s.percent, eta, s.state, s.batch, s.rate)
				}
				if err := os.WriteFile(o.trace, []byte(b.String()), 0o644); err != nil {
					return nil, 0, err
				}
			}
			for i := range samples {
				samples[i].left = end.Sub(samples[i].at)
			}
			return samples, end.Sub(t0), nil
		case <-tick.C:
			m, err := e.Get(ctx, res.Migration.ID)
			if err != nil {
				return nil, 0, err
			}
			raw, _ := json.Marshal(m)
			s := sample{at: time.Now(), eta: m.Progress.ETA, state: m.Progress.State, batch: m.BatchSize, rate: m.Progress.RowsPerSec, raw: raw}
			if m.Progress.ETA != nil {
				s.oldETA = oldETA(ctx, e, m)
			}
			if m.Progress.Percent != nil {
				s.percent = *m.Progress.Percent
			}
			samples = append(samples, s)
		}
	}
}

// report prints, for each progress point, the ETA shown at the first
// sample past it against the time that was actually left.
func report(o options, run int, samples []sample, took time.Duration) {
	kind := "idle"
	if o.load {
		kind = fmt.Sprintf("pgbench -R %.0f -c %d (single-row UPDATEs of the migrated table)", o.rate, o.writers)
	}
	fmt.Printf("run %d, %s: %d rows in %s\n", run, kind, o.rows, took.Round(100*time.Millisecond))
	var errs []string
	for _, p := range []float64{10, 30, 60} {
		i := slices.IndexFunc(samples, func(s sample) bool { return s.percent >= p })
		if i < 0 {
			errs = append(errs, fmt.Sprintf("%.0f%%: no sample", p))
			continue
		}
		s := samples[i]
		actual := s.left
		if s.eta == nil {
			errs = append(errs, fmt.Sprintf("%.0f%% (at %.1f%%): no ETA (%s), actual %s", p, s.percent, s.state, actual.Round(time.Second)))
			continue
		}
		eta := time.Duration(*s.eta * float64(time.Second))
		old := "-"
		if s.oldETA != nil {
			old = fmt.Sprintf("%s, %+.0f%%", dur(*s.oldETA), 100*(*s.oldETA/actual.Seconds()-1))
		}
		// What no estimator knows: how the rate after this point compares
		// with the rate so far (a shared machine speeds up and slows down).
		done := s.percent / 100 * float64(o.rows)
		past, rest := done/(took-actual).Seconds(), (float64(o.rows)-done)/actual.Seconds()
		errs = append(errs, fmt.Sprintf("%.0f%% (at %.1f%%): ETA %s, actual %s, error %+.0f%% (before issue 15's estimator: %s); rows/s so far %.0f, in the rest %.0f (%+.0f%%)", p, s.percent,
			eta.Round(time.Second), actual.Round(time.Second), 100*(eta.Seconds()/actual.Seconds()-1), old, past, rest, 100*(rest/past-1)))
	}
	fmt.Println("  " + strings.Join(errs, "\n  "))
	// Smoothness: between two samples an ETA should fall by the time that
	// passed; the largest rise or fall beyond that, as a share of the ETA
	// before, between 5% and 95% progress (the last seconds jump by
	// nature).
	var worst float64
	var where string
	at := 0
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		if a.eta == nil || b.eta == nil || a.percent < 5 || b.percent > 95 {
			continue
		}
		dt := b.at.Sub(a.at).Seconds()
		jump := (*b.eta - (*a.eta - dt)) / *a.eta
		if math.Abs(jump) > math.Abs(worst) {
			worst, at = jump, i
			where = fmt.Sprintf("%s -> %s at %.1f%%", dur(*a.eta), dur(*b.eta), b.percent)
		}
	}
	fmt.Printf("  largest ETA jump between two reads %.2fs apart: %+.0f%% (%s); before issue 15's estimator: %+.0f%%\n",
		o.every.Seconds(), 100*worst, where, 100*largestJump(samples, func(s sample) *float64 { return s.oldETA }))
	if math.Abs(worst) > 0.25 {
		for _, s := range samples[max(at-3, 0):min(at+3, len(samples))] {
			if s.eta == nil {
				continue
			}
			fmt.Printf("    %.2fs left: %.2f%%, ETA %s, %s, batch size %d, %.0f rows/s\n", s.left.Seconds(), s.percent, dur(*s.eta), s.state, s.batch, s.rate)
			if os.Getenv("ETA_DEBUG") != "" {
				fmt.Printf("      %s\n", s.raw)
			}
		}
	}
}

func dur(s float64) time.Duration { return time.Duration(s * float64(time.Second)).Round(time.Second) }

// startLoad runs pgbench (its own process) until the returned stop is
// called: -rate single-row UPDATEs per second of random ids on another
// column of the migrated table.
func startLoad(url, table string, rows, clients int, rate float64) (func() error, error) {
	bin, err := pgbench()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ferry-bench-eta-")
	if err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "update.sql")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE %s SET w = w + 1 WHERE id = :id;\n", rows, table)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-n", "-f", script, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", "86400", "-R", strconv.FormatFloat(rate, 'f', -1, 64), url)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return func() error {
		defer os.RemoveAll(dir)
		select {
		case err := <-exited:
			return fmt.Errorf("pgbench stopped early: %v: %s", err, out.String())
		default:
		}
		// SIGTERM, not SIGINT: a shell without job control starts its
		// background jobs with SIGINT ignored, and pgbench inherits that.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		return nil
	}, nil
}

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

func sep(url string) string {
	if strings.Contains(url, "?") {
		return "&"
	}
	return "?"
}

// largestJump is the smoothness figure of report for the ETA eta picks.
func largestJump(samples []sample, eta func(sample) *float64) float64 {
	var worst float64
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		ea, eb := eta(a), eta(b)
		if ea == nil || eb == nil || a.percent < 5 || b.percent > 95 || *ea <= 0 {
			continue
		}
		if jump := (*eb - (*ea - b.at.Sub(a.at).Seconds())) / *ea; math.Abs(jump) > math.Abs(worst) {
			worst = jump
		}
	}
	return worst
}

// oldETA is the ETA as the read model computed it before issue 15 (the
// last 20 batches' cycle, rescaled to the current batch size), on the
// same data, so both estimators are compared on the same migration: on a
// shared machine two runs differ more than two estimators.
func oldETA(ctx context.Context, e *batched.Engine, m *batched.MigrationInfo) *float64 {
	var n int
	var span, busy float64
	var sizes, ids, left, cursor int64
	err := e.Pool().QueryRow(ctx, `SELECT count(*)::int, coalesce(extract(epoch FROM max(r.finished_at) - min(r.started_at)), 0)::float8,
			coalesce(sum(extract(epoch FROM r.finished_at - r.started_at)), 0)::float8, coalesce(sum(r.batch_size), 0)::bigint,
			coalesce(sum(r.max_value - r.min_value + 1), 0)::bigint,
			(SELECT coalesce(sum(j.max_value - greatest(coalesce(j.cursor_value, j.min_value - 1), j.min_value - 1)) FILTER (WHERE j.status <> 3), 0)::bigint
				FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = $1),
			(SELECT coalesce(max(j.max_value), $2 - 1) FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = $1)
		FROM (SELECT started_at, finished_at, batch_size, min_value, max_value FROM batched_background_migration_jobs
			WHERE batched_background_migration_id = $1 AND status = 3 AND started_at IS NOT NULL AND finished_at IS NOT NULL
			ORDER BY id DESC LIMIT 20) r`, m.ID, m.MinValue).Scan(&n, &span, &busy, &sizes, &ids, &left, &cursor)
	if err != nil || n < 1 || sizes <= 0 || ids <= 0 {
		return nil
	}
	cycle := span / float64(n)
	if cycle <= 0 {
		return nil
	}
	avgDur, avgRows, cur := busy/float64(n), float64(sizes)/float64(n), float64(m.BatchSize)
	newDur := avgDur * cur / avgRows
	var newCycle float64
	if interval := float64(m.Interval); interval > 0 && cycle <= 1.1*interval {
		newCycle = max(cycle, newDur)
	} else {
		newCycle = max(cycle-avgDur, 0) + newDur
	}
	if newCycle <= 0 {
		return nil
	}
	rate := cur * float64(ids) / float64(sizes) / newCycle
	eta := (float64(left) + float64(max(m.MaxValue-cursor, 0))) / rate
	return &eta
}
