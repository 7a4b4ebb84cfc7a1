package batched

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Estimates of how long a batched migration will run before it has run a
// batch: for `ferry db migrate --dry-run` (the migrations an upgrade queues
// or requires) and for queued migrations in the read model. Rows to go come
// from the table (pg_class.reltuples, else the id range); the rate from the
// migrations that finished on the same database (their rows over the time
// their batches took, without pacing sleeps and without long gaps such as
// pauses), else from a short timed read of the table. Each rate is a
// guess about another table, so the estimate is a range, and it says what
// it rests on: honest rather than precise.

// Estimate is how long a migration should take, flat out, on this database.
type Estimate struct {
	Rows     int64  `json:"rows"`      // rows to go
	RowsFrom string `json:"rows_from"` // where Rows comes from
	// Seconds is the central estimate, Low..High its range; all 0 when
	// there is no rate (Runs == 0 and no Probe).
	Seconds    float64 `json:"seconds"`
	Low        float64 `json:"low_seconds"`
	High       float64 `json:"high_seconds"`
	RowsPerSec float64 `json:"rows_per_second"` // the rate assumed
	// Runs is how many finished migrations the rate comes from, and
	// SameClass whether they ran the same class.
	Runs      int  `json:"finished_migrations"`
	SameClass bool `json:"same_class"`
	// Probe is the timed read the rate was guessed from when no migration
	// has finished on this database.
	Probe *ReadProbe `json:"read_probe,omitempty"`
	// MaxDuty is bbm.max_duty_under_load: while the application uses the
	// database ferry runs this share of the time, so up to 1/MaxDuty
	// times longer.
	MaxDuty float64 `json:"max_duty_under_load"`
	// Note replaces the estimate when there is nothing to run ("it is
	// finished", "the table does not exist yet").
	Note string `json:"note,omitempty"`
}

// ReadProbe is a timed read of a table's first rows in batching order.
type ReadProbe struct {
	Rows    int64   `json:"rows"`
	Seconds float64 `json:"seconds"`
}

// copyVsRead is how many times slower a batched copy is than the probe's
// read of the same rows: 13x (a quiet machine) to 44x (a busy one) on the
// bench table (bench/eta, BENCHMARKS.md), widened for tables with more
// indexes or wider rows.
var copyVsRead = [3]float64{8, 20, 50} // fastest, usual, slowest

// PastRun is one migration's measured speed: its rows over the time its
// batches took (see estimateFrom).
type PastRun struct {
	ID      int64
	Class   string
	Rows    int64
	Seconds float64
}

func (r PastRun) rate() float64 { return float64(r.Rows) / r.Seconds }

// Minimum size of a run whose rate is trusted: tiny ones measure start-up.
const (
	minRunRows    = 10_000
	minRunSeconds = 1.0
	// maxRuns: the rate follows the recent migrations (hardware, load and
	// PostgreSQL settings change).
	maxRuns = 20
	// A gap between two batches longer than this is not the migration's
	// rhythm (a pause, a hold, no worker) and is not counted.
	runGap = 30 * time.Second
)

// pastRunsSQL measures the finished migrations: per migration, the rows of
// its succeeded batches over the union of their run times (parallel
// batches count once) plus the short gaps between them, minus the time
// paced batches slept.
var pastRunsSQL = `WITH m AS (
	SELECT id, job_class_name FROM batched_background_migrations
	WHERE status IN (3, 6) ORDER BY coalesce(finished_at, updated_at) DESC, id DESC LIMIT ` + fmt.Sprint(maxRuns) + `),
j AS (
	SELECT j.batched_background_migration_id AS mid, j.rows_done, j.started_at, j.finished_at,
		coalesce((j.metrics->'pacing'->>'paused_s')::float8, 0) AS paused,
		max(j.finished_at) OVER (PARTITION BY j.batched_background_migration_id ORDER BY j.started_at, j.id
			ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
	FROM batched_background_migration_jobs j JOIN m ON m.id = j.batched_background_migration_id
	WHERE j.status = 3 AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL)
SELECT m.id, m.job_class_name, sum(j.rows_done)::bigint,
	sum(greatest(extract(epoch FROM j.finished_at - greatest(j.started_at, coalesce(j.prev_end, j.started_at))), 0)
		+ CASE WHEN j.prev_end < j.started_at AND j.started_at - j.prev_end < interval '` + fmt.Sprint(runGap.Seconds()) + ` seconds'
			THEN extract(epoch FROM j.started_at - j.prev_end) ELSE 0 END
		- j.paused)::float8
FROM j JOIN m ON m.id = j.mid GROUP BY m.id, m.job_class_name ORDER BY m.id`

// PastRuns reads the speed of the migrations that finished on db, newest
// first; none when ferry's tables do not exist (a dry run changes nothing,
// so it may come before `ferry setup`).
func PastRuns(ctx context.Context, db Queryer) ([]PastRun, error) {
	rows, err := db.Query(ctx, pastRunsSQL)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" {
			return nil, nil
		}
		return nil, fmt.Errorf("bbm: finished migrations' rates: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PastRun, error) {
		var p PastRun
		err := r.Scan(&p.ID, &p.Class, &p.Rows, &p.Seconds)
		return p, err
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" {
			return nil, nil
		}
		return nil, fmt.Errorf("bbm: finished migrations' rates: %w", err)
	}
	return out, nil
}

// estimateFrom estimates rows of class from past runs: the median rate of
// the runs of the same class (of all runs when none ran it), and a range
// from the slowest to the fastest of them, widened because this table is
// not theirs: 1.5x either way with two or more runs of the class, 2x with
// one run or other classes only. Nil when no run is usable.
func estimateFrom(rows int64, class string, runs []PastRun) *Estimate {
	var same, all []float64
	for _, r := range runs {
		if r.Rows < minRunRows || r.Seconds < minRunSeconds {
			continue
		}
		all = append(all, r.rate())
		if r.Class == class {
			same = append(same, r.rate())
		}
	}
	rates, widen := all, 2.0
	if len(same) > 0 {
		rates = same
		if len(same) >= 2 {
			widen = 1.5
		}
	}
	if len(rates) == 0 {
		return nil
	}
	slices.Sort(rates)
	mid := rates[len(rates)/2]
	if len(rates)%2 == 0 {
		mid = math.Sqrt(rates[len(rates)/2-1] * rates[len(rates)/2])
	}
	r := float64(rows)
	return &Estimate{Rows: rows, RowsPerSec: mid, Seconds: r / mid,
		Low: r / (rates[len(rates)-1] * widen), High: r / (rates[0] / widen),
		Runs: len(rates), SameClass: len(same) > 0}
}

// estimateFromProbe guesses from a timed read: a copy is copyVsRead times
// slower than reading the same rows.
func estimateFromProbe(rows int64, p ReadProbe) *Estimate {
	if p.Rows <= 0 || p.Seconds <= 0 {
		return &Estimate{Rows: rows}
	}
	read := float64(p.Rows) / p.Seconds
	r := float64(rows)
	return &Estimate{Rows: rows, RowsPerSec: read / copyVsRead[1], Seconds: r * copyVsRead[1] / read,
		Low: r * copyVsRead[0] / read, High: r * copyVsRead[2] / read, Probe: &p}
}

// probeRows is how many rows the read probe reads; a few tens of
// milliseconds on an ordinary table.
const probeRows = 20_000

// probeBeginError: the probe's transaction could not start (the database
// is away), as opposed to the read failing on the table.
type probeBeginError struct{ err error }

func (e probeBeginError) Error() string { return e.err.Error() }
func (e probeBeginError) Unwrap() error { return e.err }

// probeTable runs probeRead in a transaction of its own, rolled back.
func probeTable(ctx context.Context, db Beginner, t *Target) (ReadProbe, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return ReadProbe{}, probeBeginError{err}
	}
	defer func() { _ = tx.Rollback(ctx) }()
	return probeRead(ctx, tx, t)
}

// probeRead times reading the table's first probeRows rows in batching
// order (every column, as a copy reads them), read-only, within 2 s.
func probeRead(ctx context.Context, db pgx.Tx, t *Target) (ReadProbe, error) {
	if _, err := db.Exec(ctx, `SET TRANSACTION READ ONLY`); err != nil {
		return ReadProbe{}, err
	}
	if _, err := db.Exec(ctx, `SET LOCAL statement_timeout = '2s'`); err != nil {
		return ReadProbe{}, err
	}
	var n int64
	t0 := time.Now()
	if err := db.QueryRow(ctx, `SELECT count(*) FROM (SELECT s::text FROM (SELECT * FROM `+t.Ident()+
		` ORDER BY `+Quote(t.Column)+` LIMIT `+fmt.Sprint(probeRows)+`) s) r`).Scan(&n); err != nil {
		return ReadProbe{}, err
	}
	return ReadProbe{Rows: n, Seconds: time.Since(t0).Seconds()}, nil
}

// probeTTL is how long a table's read probe stands for a queued
// migration's estimate: `bbm status`, the web page and /metrics read the
// estimate often, and the table's speed changes slowly.
const probeTTL = 10 * time.Minute

// probeCache holds the read probes of tables, by table and column.
type probeCache struct {
	mu sync.Mutex
	m  map[[2]string]cachedProbe
}

type cachedProbe struct {
	at time.Time
	p  ReadProbe
	ok bool
}

// get times a read of table's first rows at most once per probeTTL.
func (c *probeCache) get(ctx context.Context, db Beginner, table, column string) (ReadProbe, bool) {
	key := [2]string{table, column}
	c.mu.Lock()
	got, hit := c.m[key]
	c.mu.Unlock()
	if hit && time.Since(got.at) < probeTTL {
		return got.p, got.ok
	}
	got = cachedProbe{at: time.Now()}
	if t, err := ResolveTarget(ctx, db, table, column); err == nil {
		p, perr := probeTable(ctx, db, t)
		got.p, got.ok = p, perr == nil
	}
	if ctx.Err() != nil {
		return got.p, got.ok // not a result to keep
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[[2]string]cachedProbe{}
	}
	c.m[key] = got
	c.mu.Unlock()
	return got.p, got.ok
}

// Estimator estimates migrations on one database, reading its finished
// migrations once.
type Estimator struct {
	db      Beginner
	maxDuty float64
	runs    []PastRun
	read    bool
}

// Beginner is a pool: queries, and read-only transactions for the probe.
type Beginner interface {
	Queryer
	Begin(ctx context.Context) (pgx.Tx, error)
}

// NewEstimator returns an Estimator for db with h's pacing under load.
func NewEstimator(db Beginner, h HealthConfig) *Estimator {
	return &Estimator{db: db, maxDuty: h.withDefaults().MaxDutyUnderLoad}
}

func (x *Estimator) pastRuns(ctx context.Context) ([]PastRun, error) {
	if !x.read {
		runs, err := PastRuns(ctx, x.db)
		if err != nil {
			return nil, err
		}
		x.runs, x.read = runs, true
	}
	return x.runs, nil
}

// ForConfig estimates the migration of a configuration: what is left of
// it when it was queued already, else all of its table.
func (x *Estimator) ForConfig(ctx context.Context, class, table, column string, args []byte) (*Estimate, error) {
	m, err := FindConfig(ctx, x.db, class, table, column, args)
	switch {
	case err == nil:
		return x.forMigration(ctx, m)
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	t, err := ResolveTarget(ctx, x.db, table, column)
	if err != nil {
		if errors.Is(err, ErrTableNotFound) || errors.Is(err, ErrColumnNotFound) {
			// Created by an earlier migration of the same upgrade: its
			// rows are not known before that one runs (usually none).
			return &Estimate{Note: fmt.Sprintf("%s.%s does not exist yet (an earlier migration of this run may create it), so its size is not known before the run: "+
				"usually it starts empty; `ferry bbm status` estimates it once queued", table, column), MaxDuty: x.maxDuty}, nil
		}
		return nil, err
	}
	rows, from, err := tableRows(ctx, x.db, t)
	if err != nil {
		return nil, err
	}
	return x.estimate(ctx, rows, from, class, t)
}

func (x *Estimator) forMigration(ctx context.Context, m *Migration) (*Estimate, error) {
	if m.Status.Done() {
		return &Estimate{Note: "it is '" + m.Status.String() + "': nothing to run", MaxDuty: x.maxDuty}, nil
	}
	var done, leftIDs int64
	var cursor *int64
	if err := x.db.QueryRow(ctx, `SELECT coalesce(sum(rows_done), 0)::bigint, max(max_value),
		coalesce(sum(max_value - greatest(coalesce(cursor_value, min_value - 1), min_value - 1)) FILTER (WHERE status <> 3), 0)::bigint
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, m.ID).Scan(&done, &cursor, &leftIDs); err != nil {
		return nil, err
	}
	rows, from := rowsToGo(m, done, cursor, leftIDs)
	t, err := ResolveTarget(ctx, x.db, m.Table, m.Column)
	if err != nil {
		t = nil // no probe; history only
	}
	return x.estimate(ctx, rows, from, m.Class, t)
}

// rowsToGo is what is left of m: its row estimate minus the rows done,
// else the ids not yet covered.
func rowsToGo(m *Migration, done int64, cursor *int64, leftIDs int64) (int64, string) {
	if m.TotalTuples != nil && *m.TotalTuples > 0 {
		return max(*m.TotalTuples-done, 0), "its row estimate (total_tuple_count) minus the rows done"
	}
	from := m.MinValue - 1
	if cursor != nil {
		from = *cursor
	}
	return leftIDs + max(m.MaxValue-from, 0), "the ids left in its range"
}

// tableRows is the table's row estimate: pg_class.reltuples, else (never
// analysed) the span of the batching column, an upper bound.
func tableRows(ctx context.Context, db Queryer, t *Target) (int64, string, error) {
	var est float64
	if err := db.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1`, t.OID).Scan(&est); err != nil {
		return 0, "", err
	}
	if est >= 0 {
		return int64(est), "pg_class.reltuples", nil
	}
	var lo, hi *int64
	if err := db.QueryRow(ctx, `SELECT min(`+Quote(t.Column)+`)::bigint, max(`+Quote(t.Column)+`)::bigint FROM `+t.Ident()).Scan(&lo, &hi); err != nil {
		return 0, "", err
	}
	if lo == nil {
		return 0, "the table is empty", nil
	}
	return *hi - *lo + 1, "the id range (the table was never analysed)", nil
}

func (x *Estimator) estimate(ctx context.Context, rows int64, from, class string, t *Target) (*Estimate, error) {
	if rows == 0 {
		return &Estimate{RowsFrom: from, MaxDuty: x.maxDuty, Note: "no rows to go"}, nil
	}
	runs, err := x.pastRuns(ctx)
	if err != nil {
		return nil, err
	}
	est := estimateFrom(rows, class, runs)
	if est == nil && t != nil {
		p, perr := probeTable(ctx, x.db, t)
		if be := (probeBeginError{}); errors.As(perr, &be) {
			return nil, be.err
		}
		if perr == nil {
			est = estimateFromProbe(rows, p)
		}
	}
	if est == nil {
		est = &Estimate{Rows: rows}
	}
	est.RowsFrom, est.MaxDuty = from, x.maxDuty
	return est, nil
}

// span is " (LOW-HIGH)", or "" when both round to the same figure.
func (e *Estimate) span() string {
	lo, hi := approx(e.Low), approx(e.High)
	if lo == hi {
		return ""
	}
	return " (" + lo + "-" + hi + ")"
}

// Text says the estimate in a line: "about 40 min (25 min-1h10m) for
// 2,000,000 rows, from 3 finished migrations of the same class on this
// database at 180k rows/s; ...".
func (e *Estimate) Text() string {
	if e.Note != "" {
		return e.Note
	}
	var b strings.Builder
	rows := fmt.Sprintf("%s rows to go (%s)", thousands(e.Rows), e.RowsFrom)
	switch {
	case e.Runs > 0:
		what := "finished migrations"
		if e.Runs == 1 {
			what = "finished migration"
		}
		if e.SameClass {
			what += " of the same class"
		} else {
			what += " (other classes)"
		}
		fmt.Fprintf(&b, "about %s%s for %s, from %d %s on this database at %s rows/s",
			approx(e.Seconds), e.span(), rows, e.Runs, what, short(e.RowsPerSec))
	case e.Probe != nil:
		fmt.Fprintf(&b, "no rate measured yet on this database: guessed from a read of %s rows in %s (a copy is usually %.0f-%.0fx slower than that read), about %s%s for %s",
			thousands(e.Probe.Rows), time.Duration(e.Probe.Seconds*float64(time.Second)).Round(100*time.Microsecond),
			copyVsRead[0], copyVsRead[2], approx(e.Seconds), e.span(), rows)
	default:
		fmt.Fprintf(&b, "no rate measured yet on this database (no finished batched migration here ran %s rows and %.0f s, enough to measure): %s",
			thousands(minRunRows), minRunSeconds, rows)
		return b.String()
	}
	if e.MaxDuty > 0 && e.MaxDuty < 1 {
		fmt.Fprintf(&b, "; on an idle database: while the application uses it, ferry runs as little as %.0f%% of the time (bbm.max_duty_under_load), up to %.0fx longer",
			100*e.MaxDuty, 1/e.MaxDuty)
	}
	return b.String()
}

// approx rounds a duration the way a person says it: "40 s", "12 min",
// "3h20m".
func approx(secs float64) string {
	d := time.Duration(secs * float64(time.Second))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", max(int(d.Round(time.Second)/time.Second), 1))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Round(time.Minute)/time.Minute))
	case d < 48*time.Hour:
		d = d.Round(10 * time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%.1f days", d.Hours()/24)
}

// short prints a rate as "180k" or "1.2M".
func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// thousands prints 2000000 as "2,000,000".
func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
