package batched

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// The read model: what `ferry bbm status/list/show`, the web UI and
// /metrics say about a migration, computed in one place so they agree.
//
// Progress is committed rows over the table's row estimate: the rows_done
// of every batch (committed with each sub-batch, so a failed or running
// batch counts what it did) divided by total_tuple_count, capped at 99.99%
// until the migration is finished (GitLab divides the batch sizes of
// succeeded batches by the same estimate). Without an estimate (rows not
// queued by ferry, NULL or 0), it is the share of the id range covered by
// succeeded batches.
//
// A migration that is not moving (paused, pause-all, on hold, failed,
// finished, or no batch for stalledAfter) has no rate and no ETA, only a
// reason that names the command that changes it.

// Progress of a migration.
type Progress struct {
	RowsDone    int64    `json:"rows_done"`
	TotalTuples int64    `json:"total_tuple_count"`
	Percent     *float64 `json:"progress"` // nil: unknown
	// RowsPerSec is the committed rows per wall-clock second over the
	// recent batches of the current run; 0 when not moving or unknown.
	RowsPerSec float64 `json:"rows_per_second"`
	// ETA in seconds; nil when not moving or not measured yet.
	ETA     *float64 `json:"eta_seconds"`
	Running int      `json:"running_jobs"`
	Failed  int      `json:"failed_jobs"`
	Jobs    int      `json:"jobs"`
	// State is one of the State* constants.
	State State `json:"state"`
	// Reason says, in plain words with the command that changes it, why
	// the migration is not moving or is slowed; empty when nothing to say.
	Reason string `json:"reason,omitempty"`
	// Estimate is, for a queued migration that has not run a batch yet,
	// how long it should take, from the migrations that finished on this
	// database (see Estimate).
	Estimate *Estimate `json:"estimate,omitempty"`
}

// Moving reports whether the migration advances on its own now.
func (p Progress) Moving() bool {
	switch p.State {
	case StateRunning, StateEstimating, StatePaced, StateSlowed, StateFinalizing:
		return true
	}
	return false
}

// State is a one-word summary of what a migration is doing.
type State string

// States. Only the first five are moving.
const (
	StateRunning    State = "running"
	StateEstimating State = "estimating" // running, rate not measured yet
	StatePaced      State = "paced"      // running a share of the time while others use the database
	StateSlowed     State = "slowed"     // one batch at a time (a health signal)
	StateFinalizing State = "finalizing"
	StatePaused     State = "paused"
	StatePausedAll  State = "paused_all"
	StateOnHold     State = "on_hold"
	StateWaiting    State = "waiting" // for a turn: max-running, or its table's other migration
	StateStalled    State = "stalled"
	StateFailed     State = "failed"
	StateFinished   State = "finished"
)

// PausedAllReason is the reason of every migration while pause-all is on.
const PausedAllReason = "paused by `ferry bbm pause-all`; `ferry bbm resume-all` resumes"

// stalledAfter: an active migration with no batch activity for this long is
// said not to move (no worker, or never its turn).
const stalledAfter = 5 * time.Minute

// The rate behind the ETA is the ids covered per second of wall clock
// over the recent batches of the current run, each weighted by
// exp(-age/tau), plus the open cycle (what the running batches did since
// the last one finished) at full weight. Wall clock, not batch time, so
// whatever slows the migration now (pacing sleeps, a slowed migration's
// single batch, gaps between batches) is in it as long as it lasts; tau
// is at least rateTau and at least 8 recent batches, so one slow or fast
// batch moves the ETA a little, and a change that lasts moves it within
// a minute. The start-up ramp is left out (rampEnd). No rescaling by the
// current batch size: the optimizer changes the size to keep the batch
// duration, not the rate, so a new size predicts little and made the ETA
// jump.
//
// Paced batches (others use the database) are a regime of their own: once
// the last two batches were paced, only the paced batches since pacing
// began count, so the ETA shows the paced rate at once instead of
// averaging it with the idle one. Their tau is pacedRateTau: the
// closed-loop controller moves the rate up and down several-fold within a
// minute (BENCHMARKS.md section 2), and only a longer memory averages its
// swings instead of following each. The loop's climb from its floor at
// the start of pacing is not one of them: it fades as the batches after
// it cover time (climbEnd).
const (
	rateWindow   = 100 // batches read
	rateTau      = 30 * time.Second
	pacedRateTau = 2 * time.Minute
	// The closed loop's climb (climbEnd) counts less and less as the
	// batches after it cover time: a share exp(-t/climbFade) after t.
	// Fading rather than dropping it keeps the ETA from jumping when the
	// climb ends. climbMax is the longest climb that is one.
	climbFade = 4 * time.Second
	climbMax  = 30 * time.Second
	// cutRatio: a duty below this share of an earlier one was cut, and
	// one at this share of the ceiling reached it.
	cutRatio = 0.95
)

// BatchSample is a migration's latest succeeded batch (for /metrics).
type BatchSample struct {
	BatchSize  int       `json:"batch_size"`
	Duration   float64   `json:"duration_s"`
	FinishedAt time.Time `json:"finished_at"`
}

// MigrationInfo is a migration with its progress: one entry of the read
// model.
type MigrationInfo struct {
	*Migration
	Progress  Progress     `json:"progress_info"`
	Interval  int          `json:"interval"`
	UpdatedAt time.Time    `json:"updated_at"`
	LastBatch *BatchSample `json:"last_batch,omitempty"`

	agg agg
	win window
}

// agg sums up a migration's jobs.
type agg struct {
	rowsDone              int64
	running, failed, jobs int
	cursor                *int64     // highest max_value of any job
	leftIDs               int64      // ids still to do inside unfinished jobs
	doneIDs               int64      // ids of succeeded jobs
	touched               *time.Time // latest job update
	finalizerGone         bool
	orphaned              int  // running jobs whose worker is gone
	unregistered          bool // this binary lacks its class (from the registry, not SQL)
}

// window summarises the most recent succeeded batches of the current run
// (finished since the migration was last made active: after a pause or a
// retry, older batches would make the rate look slower than it is), one
// entry per batch, oldest first, plus what running batches did so far.
type window struct {
	ids   []int64   // max_value - min_value + 1
	rows  []int64   // rows_done
	cover []float64 // seconds of wall clock the batch accounts for (see viewSQL)
	age   []float64 // seconds from its finish to now
	paced []bool    // it slept for others (contention pacing): lowDuty < 1
	// The duty cycle while paced: the lowest during the batch (1 when not
	// paced), the one it ended at, and the highest it reached; nil where
	// pacing did not record them. They tell the closed loop's climb
	// (climbEnd).
	lowDuty, endDuty, highDuty []float64
	// The open cycle: since the last batch finished (or the running
	// batches started, after a long gap), running batches did openIDs ids
	// and openRows rows in openSecs.
	openIDs, openRows int64
	openSecs          float64
}

// cluster is the state shared by every migration.
type cluster struct {
	Settings
	workers bool   // an engine session is alive
	db      string // Config.Database: named in the commands printed
	// active are the active migrations, by id, and picked those the
	// scheduler gives batches to now (candidatesSQL): what a migration
	// without a running batch waits for.
	active []activeMigration
	picked []int64
}

type activeMigration struct {
	id        int64
	table     string // tableKey: one value per table, however it is spelled
	sameTable bool   // allow_same_table
	running   bool   // has a running batch
}

// ref is migration id as the printed commands take it: ci_3 when the
// engine's database is named, else 3.
func (c cluster) ref(id int64) string { return Ref(c.db, id) }

// notFound is ErrNotFound for id, named as the commands take it (ci_9).
func (e *Engine) notFound(id int64) error {
	return fmt.Errorf("%w: id %s", ErrNotFound, Ref(e.database, id))
}

// Ref writes a migration's id as GitLab prints it and the commands take
// it: ci_3 in database ci, 3 when db is "" (one database). SplitRef
// reads it back.
func Ref(db string, id int64) string {
	if db != "" {
		return db + "_" + strconv.FormatInt(id, 10)
	}
	return strconv.FormatInt(id, 10)
}

// SplitRef splits a migration id as ref writes it for a named database
// (ci_3) into the name and the id; prefixed is false for a bare id (3).
func SplitRef(s string) (db, id string, prefixed bool) {
	if i := strings.LastIndexByte(s, '_'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}

// flag is " --db NAME" for the cluster-wide commands, when named.
func (c cluster) flag() string {
	if c.db != "" {
		return " --db " + c.db
	}
	return ""
}

// PausedAllReasonIn is PausedAllReason for database db among several
// ("" : the one database).
func PausedAllReasonIn(db string) string {
	if db == "" {
		return PausedAllReason
	}
	return "paused by `ferry bbm pause-all --db " + db + "`; `ferry bbm resume-all --db " + db + "` resumes"
}

// viewSQL selects a migration with everything its progress needs. The
// lateral subqueries' columns are prefixed so migrationCols stays
// unambiguous.
var viewSQL = `SELECT ` + migrationCols + `, "interval", updated_at, (` + finalizerGone + `),
	coalesce(a.a_rows, 0), coalesce(a.a_running, 0), coalesce(a.a_failed, 0), coalesce(a.a_n, 0),
	a.a_cursor, coalesce(a.a_left, 0), coalesce(a.a_done, 0), a.a_touched,
	coalesce(a.a_open_ids, 0), coalesce(a.a_open_rows, 0), a.a_open_start, coalesce(a.a_orphaned, 0),
	w.w_ids, w.w_rows, w.w_cover, w.w_age, w.w_low, w.w_end, w.w_high, w.w_last,
	l.l_size, l.l_dur, l.l_at, now()
FROM batched_background_migrations m
LEFT JOIN LATERAL (
	SELECT sum(j.rows_done)::bigint AS a_rows, count(*) FILTER (WHERE j.status = 1)::int AS a_running,
		count(*) FILTER (WHERE j.status = 2)::int AS a_failed, count(*)::int AS a_n, max(j.max_value) AS a_cursor,
		(sum(j.max_value - greatest(coalesce(j.cursor_value, j.min_value - 1), j.min_value - 1)) FILTER (WHERE j.status <> 3))::bigint AS a_left,
		(sum(j.max_value - j.min_value + 1) FILTER (WHERE j.status = 3))::bigint AS a_done,
		max(j.updated_at) AS a_touched,
		(sum(greatest(coalesce(j.cursor_value, j.min_value - 1), j.min_value - 1) - j.min_value + 1) FILTER (WHERE j.status = 1))::bigint AS a_open_ids,
		(sum(j.rows_done) FILTER (WHERE j.status = 1))::bigint AS a_open_rows,
		min(j.started_at) FILTER (WHERE j.status = 1) AS a_open_start,
		-- running batches whose worker stopped heartbeating: nobody runs them
		count(*) FILTER (WHERE j.status = 1 AND j.worker_session IS NOT NULL AND NOT ` + sessionAlive("j.worker_session") + `)::int AS a_orphaned
	FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = m.id) a ON true
LEFT JOIN LATERAL (
	SELECT array_agg((r.max_value - r.min_value + 1)::bigint ORDER BY r.started_at, r.id) AS w_ids,
		array_agg(r.rows_done::bigint ORDER BY r.started_at, r.id) AS w_rows,
		-- The wall clock a batch accounts for: what it adds to the union
		-- of the batches' run times (parallel batches count once), plus
		-- the gap before it unless that gap was a stop (a pause, a hold,
		-- no worker).
		array_agg((greatest(extract(epoch FROM r.finished_at - greatest(r.started_at, coalesce(r.prev_end, r.started_at))), 0)
			+ CASE WHEN r.prev_end < r.started_at AND extract(epoch FROM r.started_at - r.prev_end) < ` + gapSecs + `
				THEN extract(epoch FROM r.started_at - r.prev_end) ELSE 0 END)::float8 ORDER BY r.started_at, r.id) AS w_cover,
		array_agg(extract(epoch FROM now() - r.finished_at)::float8 ORDER BY r.started_at, r.id) AS w_age,
		array_agg(coalesce((r.metrics->'pacing'->>'min_duty_cycle')::float8, 1) ORDER BY r.started_at, r.id) AS w_low,
		array_agg(coalesce((r.metrics->'pacing'->>'duty_cycle')::float8, 1) ORDER BY r.started_at, r.id) AS w_end,
		array_agg(greatest((r.metrics->'pacing'->>'duty_cycle')::float8, (r.metrics->'pacing'->>'max_duty_cycle')::float8, 0) ORDER BY r.started_at, r.id) AS w_high,
		max(r.finished_at) AS w_last
	FROM (SELECT s.*, max(s.finished_at) OVER (ORDER BY s.started_at, s.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
		FROM (SELECT j.id, j.started_at, j.finished_at, j.rows_done, j.min_value, j.max_value, j.metrics
			FROM batched_background_migration_jobs j
			WHERE j.batched_background_migration_id = m.id AND j.status = 3 AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
				AND (m.started_at IS NULL OR j.finished_at >= m.started_at)
			ORDER BY j.id DESC LIMIT ` + strconv.Itoa(rateWindow) + `) s) r) w ON true
LEFT JOIN LATERAL (
	SELECT j.batch_size AS l_size, extract(epoch FROM j.finished_at - j.started_at)::float8 AS l_dur, j.finished_at AS l_at
	FROM batched_background_migration_jobs j
	WHERE j.batched_background_migration_id = m.id AND j.status = 3 AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
	ORDER BY j.id DESC LIMIT 1) l ON true`

// gapSecs is the SQL for the longest gap between two batches that is
// still the migration's rhythm rather than a stop: 30 s, or two of its
// interval (GitLab's migrations, queued with a 2-minute one).
const gapSecs = `greatest(30, 2 * m."interval")`

func scanView(row pgx.Row) (*MigrationInfo, time.Time, error) {
	v := &MigrationInfo{Migration: &Migration{}}
	m, a, w := v.Migration, &v.agg, &v.win
	var args []byte
	var openStart, last, lastAt *time.Time
	var lastSize *int
	var lastDur *float64
	var now time.Time
	err := row.Scan(&m.ID, &m.Class, &m.Table, &m.Column, &args, &m.Status,
		&m.MinValue, &m.MaxValue, &m.BatchSize, &m.SubBatchSize, &m.MaxBatchSize, &m.PauseMs,
		&m.TotalTuples, &m.MaxParallel, &m.AllowSameTable, &m.TargetBatchMs, &m.StmtTimeoutMs,
		&m.CreatedAt, &m.StartedAt, &m.FinishedAt, &m.OnHoldUntil, &m.HoldReason, &m.SlowUntil,
		&v.Interval, &v.UpdatedAt, &a.finalizerGone,
		&a.rowsDone, &a.running, &a.failed, &a.jobs, &a.cursor, &a.leftIDs, &a.doneIDs, &a.touched,
		&w.openIDs, &w.openRows, &openStart, &a.orphaned,
		&w.ids, &w.rows, &w.cover, &w.age, &w.lowDuty, &w.endDuty, &w.highDuty, &last,
		&lastSize, &lastDur, &lastAt, &now)
	if err != nil {
		return nil, now, err
	}
	m.Args = compactJSON(args)
	for _, d := range w.lowDuty {
		w.paced = append(w.paced, d < 1)
	}
	w.openSecs = openSince(last, openStart, v.Interval, now)
	if lastSize != nil && lastDur != nil && lastAt != nil {
		v.LastBatch = &BatchSample{BatchSize: *lastSize, Duration: *lastDur, FinishedAt: *lastAt}
	}
	return v, now, nil
}

// openSince is how long the open cycle has lasted: since the last batch
// finished, or since the running batches started when they came after a
// stop (see gapSecs); 0 when nothing is open.
func openSince(last, runningSince *time.Time, interval int, now time.Time) float64 {
	gap := max(30, 2*float64(interval))
	switch {
	case last == nil && runningSince == nil:
		return 0
	case last == nil:
		return max(now.Sub(*runningSince).Seconds(), 0)
	case runningSince != nil && runningSince.Sub(*last).Seconds() >= gap:
		return max(now.Sub(*runningSince).Seconds(), 0)
	case runningSince == nil && now.Sub(*last).Seconds() >= gap:
		return 0 // between runs, not a cycle
	}
	return max(now.Sub(*last).Seconds(), 0)
}

// cluster reads the cluster-wide state the reasons depend on.
func (e *Engine) cluster(ctx context.Context) (cluster, error) {
	var c cluster
	err := e.pool.QueryRow(ctx, `SELECT max_running, paused_all,
		EXISTS (SELECT 1 FROM ferry_bbm_sessions WHERE heartbeat_at > now() - interval '`+strconv.Itoa(int(livenessGrace/time.Millisecond))+` milliseconds')
		FROM ferry_bbm_settings WHERE id = 1`).Scan(&c.MaxRunning, &c.PausedAll, &c.workers)
	if err != nil {
		return c, err
	}
	c.db = e.database
	// The scheduler only picks active migrations: one query reads both.
	rows, err := e.pool.Query(ctx, `SELECT o.id, `+tableKey("o")+`, o.allow_same_table,
		EXISTS (SELECT 1 FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = o.id AND j.status = 1),
		o.id IN (SELECT id FROM (`+candidatesSQL+`) c(id, parallel, slow, running))
		FROM batched_background_migrations o WHERE o.status = 1 ORDER BY o.id`)
	if err != nil {
		return c, err
	}
	var picked []activeMigration
	c.active, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (activeMigration, error) {
		var a activeMigration
		var isPicked bool
		err := r.Scan(&a.id, &a.table, &a.sameTable, &a.running, &isPicked)
		if isPicked {
			picked = append(picked, a)
		}
		return a, err
	})
	// In the scheduler's order: running ones first, then by id.
	slices.SortStableFunc(picked, func(x, y activeMigration) int {
		switch {
		case x.running == y.running:
			return 0
		case x.running:
			return -1
		}
		return 1
	})
	for _, a := range picked {
		c.picked = append(c.picked, a.id)
	}
	return c, err
}

// waitingFor says why m, active with no running batch, gets none now, as
// the scheduler (candidatesSQL) and claim decide it; "" when it gets one
// or when no worker runs (state says that instead).
func (c cluster) waitingFor(m *Migration) string {
	if !c.workers {
		return ""
	}
	if c.MaxRunning <= 0 {
		return fmt.Sprintf("max-running is 0: no migration starts (`ferry bbm set max-running 1%s` lets one run)", c.flag())
	}
	// Its own key, read with the others' (tableKey); "" when it became
	// active after they were read: no same-table reason this time.
	key := ""
	for _, o := range c.active {
		if o.id == m.ID {
			key = o.table
		}
	}
	var running []string
	for _, o := range c.active {
		if o.id == m.ID {
			continue
		}
		// The scheduler: an older active migration on the table goes first.
		// Claim: a running one on the table blocks unless both allow it.
		older := o.id < m.ID && !o.sameTable && !m.AllowSameTable
		if key != "" && o.table == key && (older || (o.running && !(o.sameTable && m.AllowSameTable))) {
			return fmt.Sprintf("waiting for migration %s on the same table (one migration per table): it starts when %s finishes, "+
				"or when it is paused (`ferry bbm pause %s`)", c.ref(o.id), c.ref(o.id), c.ref(o.id))
		}
		if o.running {
			running = append(running, c.ref(o.id))
		}
	}
	first := running
	if !slices.Contains(c.picked, m.ID) {
		if len(c.picked) < c.MaxRunning {
			return "" // read between two picks: no claim to make
		}
		first = nil
		for _, id := range c.picked {
			first = append(first, c.ref(id))
		}
	} else if len(running) < c.MaxRunning {
		return ""
	}
	if len(first) == 0 {
		return ""
	}
	limit, verb := fmt.Sprintf("%d migrations run", c.MaxRunning), "come"
	if c.MaxRunning == 1 {
		limit = "1 migration runs"
	}
	if len(first) == 1 {
		verb = "comes"
	}
	return fmt.Sprintf("waiting for a turn: at most %s at once and %s %s first (`ferry bbm set max-running %d%s` runs more)",
		limit, strings.Join(first, ", "), verb, c.MaxRunning+1, c.flag())
}

// list reads the migrations matching where (a condition on
// batched_background_migrations), oldest first, with their progress.
func (e *Engine) list(ctx context.Context, where string, args ...any) ([]*MigrationInfo, error) {
	return e.query(ctx, where+` ORDER BY id`, args...)
}

// query is list with the ORDER BY (and LIMIT) given by the caller.
func (e *Engine) query(ctx context.Context, whereOrder string, args ...any) ([]*MigrationInfo, error) {
	c, err := e.cluster(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := e.pool.Query(ctx, viewSQL+` WHERE `+whereOrder, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*MigrationInfo{}
	for rows.Next() {
		v, now, err := scanView(rows)
		if err != nil {
			return nil, err
		}
		if v.agg.finalizerGone {
			// Also in hold_reason, where `show --json` readers look.
			r := fmt.Sprintf("its finalize process is gone: workers make it active again, or run `ferry bbm resume %s` (or finalize again)", c.ref(v.ID))
			v.HoldReason = &r
		}
		_, known := e.reg.Lookup(v.Class)
		v.agg.unregistered = !known
		v.Progress = summarize(v, c, now)
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	e.estimateQueued(ctx, out)
	return out, nil
}

// queued reports a migration that will run but has not run a batch yet.
// One whose class this binary lacks will not run here: no estimate.
func queued(v *MigrationInfo) bool {
	return (v.Status == Active || v.Status == Paused) && v.agg.jobs == 0 && !v.agg.unregistered
}

// estimateQueued fills in the estimate of the queued migrations in vs.
// An estimate is a nicety: when it cannot be read, the list goes without.
func (e *Engine) estimateQueued(ctx context.Context, vs []*MigrationInfo) {
	if !slices.ContainsFunc(vs, queued) {
		return
	}
	runs, err := PastRuns(ctx, e.pool)
	if err != nil {
		e.log.Warn("no estimate for queued batched migrations", zap.Error(err))
		return
	}
	for _, v := range vs {
		if !queued(v) {
			continue
		}
		est := estimateQueued(v, runs, e.health.MaxDutyUnderLoad)
		if est != nil && est.RowsPerSec == 0 {
			// Nothing finished here to take a rate from: guess from a
			// timed read of its table, as db migrate --dry-run does.
			if p, ok := e.probes.get(ctx, e.pool, v.Table, v.Column); ok {
				guess := estimateFromProbe(est.Rows, p)
				guess.RowsFrom, guess.MaxDuty = est.RowsFrom, est.MaxDuty
				est = guess
			}
		}
		v.Progress.Estimate = est
	}
}

// estimateQueued estimates v from the finished migrations' runs; nil when
// no rows are left.
func estimateQueued(v *MigrationInfo, runs []PastRun, maxDuty float64) *Estimate {
	rows, from := rowsToGo(v.Migration, v.agg.rowsDone, v.agg.cursor, v.agg.leftIDs)
	if rows <= 0 {
		return nil
	}
	est := estimateFrom(rows, v.Class, runs)
	if est == nil {
		est = &Estimate{Rows: rows}
	}
	est.RowsFrom, est.MaxDuty = from, maxDuty
	return est
}

// List returns every migration, oldest first, with progress.
func (e *Engine) List(ctx context.Context) ([]*MigrationInfo, error) {
	return e.list(ctx, `TRUE`)
}

// ListStatus returns one page of the migrations in the given statuses,
// oldest first (execution order) or newest first.
func (e *Engine) ListStatus(ctx context.Context, statuses []Status, newestFirst bool, limit, offset int) ([]*MigrationInfo, error) {
	if limit < 0 || offset < 0 {
		return nil, fmt.Errorf("%w: limit and offset must be >= 0, got %d and %d", ErrInvalidOption, limit, offset)
	}
	order := "ASC"
	if newestFirst {
		order = "DESC"
	}
	codes := make([]int16, len(statuses))
	for i, s := range statuses {
		codes[i] = int16(s)
	}
	return e.query(ctx, `status = ANY($1) ORDER BY id `+order+` LIMIT $2 OFFSET $3`, codes, limit, offset)
}

// CountByStatus counts the migrations of every status.
func (e *Engine) CountByStatus(ctx context.Context) (map[Status]int64, error) {
	rows, err := e.pool.Query(ctx, `SELECT status, count(*) FROM batched_background_migrations GROUP BY status`)
	if err != nil {
		return nil, err
	}
	out := map[Status]int64{}
	var s Status
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&s, &n}, func() error {
		out[s] = n
		return nil
	})
	return out, err
}

// Get returns one migration.
func (e *Engine) Get(ctx context.Context, id int64) (*MigrationInfo, error) {
	ms, err := e.list(ctx, `id = $1`, id)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, e.notFound(id)
	}
	return ms[0], nil
}

// summarize computes the progress of v at now.
func summarize(v *MigrationInfo, c cluster, now time.Time) Progress {
	m, a := v.Migration, v.agg
	p := Progress{RowsDone: a.rowsDone, Running: a.running, Failed: a.failed, Jobs: a.jobs}
	if m.TotalTuples != nil {
		p.TotalTuples = *m.TotalTuples
	}
	p.Percent = percent(v)
	p.State, p.Reason = state(v, c, now)
	if !p.Moving() {
		return p
	}
	idRate, rowRate := rates(v.win)
	p.RowsPerSec = rowRate
	remaining := float64(a.leftIDs)
	from := m.MinValue - 1
	if a.cursor != nil {
		from = *a.cursor
	}
	remaining += float64(max(m.MaxValue-from, 0))
	switch rate := idRate; {
	case remaining <= 0:
		eta := 0.0
		p.ETA = &eta
	case rate > 0:
		eta := remaining / rate
		p.ETA = &eta
	case p.State == StateRunning:
		p.State = StateEstimating
	}
	return p
}

// percent is the progress figure (see the package's read model comment).
func percent(v *MigrationInfo) *float64 {
	m := v.Migration
	var f float64
	switch {
	case m.Status.Done():
		f = 100
	case m.TotalTuples != nil && *m.TotalTuples > 0:
		f = 100 * float64(v.agg.rowsDone) / float64(*m.TotalTuples)
	case m.MaxValue >= m.MinValue:
		f = 100 * float64(v.agg.doneIDs) / float64(m.MaxValue-m.MinValue+1)
	default:
		return nil
	}
	if !m.Status.Done() {
		f = min(f, 99.99)
	}
	return &f
}

// notRegistered ends the reason Engine.claim records for a migration it
// failed because this binary lacks its class.
const notRegistered = " is not registered in this ferry binary"

// state says what the migration is doing and why, in the order an
// operator needs it: what they did (status, pause-all) before what ferry
// does (holds, pacing).
func state(v *MigrationInfo, c cluster, now time.Time) (State, string) {
	m, a := v.Migration, v.agg
	reason := ""
	if m.HoldReason != nil {
		reason = *m.HoldReason
	}
	switch m.Status {
	case Finished, Finalized:
		return StateFinished, reason
	case Failed:
		if reason == "" {
			reason = fmt.Sprintf("%d failed batch(es)", a.failed)
		}
		if strings.HasSuffix(reason, notRegistered) {
			// retry would fail the same way in this binary.
			return StateFailed, fmt.Sprintf("%s: a binary that registers it can `ferry bbm retry %s`; if its rows were migrated "+
				"another way, `ferry bbm mark-finished %s --yes` (its remaining rows are NOT migrated)", reason, c.ref(m.ID), c.ref(m.ID))
		}
		return StateFailed, fmt.Sprintf("%s: `ferry bbm show %s` lists the errors, `ferry bbm retry %s` runs them again", reason, c.ref(m.ID), c.ref(m.ID))
	case Paused:
		finishing := ""
		if a.running > 0 {
			// Pause starts no new batch; those running commit their rows.
			finishing = fmt.Sprintf(" (%d running batch(es) finishing)", a.running)
		}
		return StatePaused, fmt.Sprintf("paused%s; `ferry bbm resume %s` resumes", finishing, c.ref(m.ID))
	case Finalizing:
		if a.finalizerGone {
			return StateStalled, reason
		}
		return StateFinalizing, "`ferry bbm finalize` is running it"
	}
	if c.PausedAll {
		return StatePausedAll, PausedAllReasonIn(c.db)
	}
	if m.OnHoldUntil != nil && m.OnHoldUntil.After(now) {
		if reason == "" {
			reason = "a health check (no reason recorded)"
		}
		return StateOnHold, fmt.Sprintf("on hold until %s: %s; it goes on by itself then",
			m.OnHoldUntil.UTC().Format("15:04:05 MST"), trimIndicator(reason))
	}
	if a.unregistered {
		// A worker of this binary fails it at its next claim: no rate, no
		// ETA, and the way out that works here.
		return StateStalled, fmt.Sprintf("class %s%s, so its batches cannot run: a worker of this binary fails it; "+
			"a binary that registers it runs it. If its rows were migrated another way, `ferry bbm mark-finished %s --yes` "+
			"(its remaining rows are NOT migrated)", m.Class, notRegistered, c.ref(m.ID))
	}
	last := m.CreatedAt
	for _, t := range []*time.Time{m.StartedAt, a.touched} {
		if t != nil && t.After(last) {
			last = *t
		}
	}
	if a.running > 0 && a.orphaned == a.running && m.Status == Active {
		// Its batches' workers stopped heartbeating: no rate, no ETA.
		how := "a running worker takes them over within seconds"
		if !c.workers {
			how = "no ferry worker is running: start one (`ferry worker`) and it takes them over"
		}
		return StateStalled, fmt.Sprintf("the worker running its batch stopped (no heartbeat for over %s); %s", livenessGrace, how)
	}
	if a.running == 0 && m.Status == Active {
		if why := c.waitingFor(m); why != "" {
			return StateWaiting, why
		}
	}
	if idle := now.Sub(last); idle >= stalledAfter {
		if !c.workers {
			return StateStalled, fmt.Sprintf("no worker has run a batch for %s: is `ferry worker` running?", humanMinutes(idle))
		}
		// Not its turn would have been "waiting": the workers are not
		// taking its batches.
		return StateStalled, fmt.Sprintf("no batch for %s although ferry workers are running and it is its turn: "+
			"are they reading queue %s? Their logs say why batches fail to start", humanMinutes(idle), Queue)
	}
	switch {
	case m.SlowUntil != nil && m.SlowUntil.After(now):
		return StateSlowed, "one batch at a time: " + trimIndicator(reason)
	case strings.HasPrefix(reason, contentionIndicator{}.name()+": "):
		return StatePaced, trimIndicator(reason)
	}
	return StateRunning, trimIndicator(reason)
}

// trimIndicator drops the "contention: " an engine prefixes to a pacing
// reason: the reason says it in words.
func trimIndicator(reason string) string {
	return strings.TrimPrefix(reason, contentionIndicator{}.name()+": ")
}

// humanMinutes prints "5 minutes", "2 hours".
func humanMinutes(d time.Duration) string {
	if d >= 2*time.Hour {
		return fmt.Sprintf("%d hours", int(d/time.Hour))
	}
	n := int(d / time.Minute)
	if n == 1 {
		return "1 minute"
	}
	return fmt.Sprintf("%d minutes", n)
}

// rates returns the ids and rows per second of w (see rateTau); 0 when
// nothing was measured.
func rates(w window) (ids, rows float64) {
	n := len(w.ids)
	if n != len(w.rows) || n != len(w.cover) || n != len(w.age) || (w.paced != nil && n != len(w.paced)) {
		return 0, 0
	}
	from := rampEnd(w.cover)
	tau := rateTau.Seconds()
	climb, fade := -1, 1.0
	if p := pacedSince(w.paced); p >= 0 {
		from, tau = max(from, p), pacedRateTau.Seconds()
		if c := climbEnd(w, from); c > from {
			// The fade starts when batch c ends, so the ETA glides.
			climb = c
			after := w.openSecs
			for _, s := range w.cover[c+1:] {
				after += s
			}
			fade = math.Exp(-after / climbFade.Seconds())
		}
	}
	if k := min(n-from, 5); k > 0 {
		var recent float64
		for _, c := range w.cover[n-k:] {
			recent += c
		}
		tau = max(tau, 8*recent/float64(k))
	}
	wIDs, wRows, wSecs := float64(w.openIDs), float64(w.openRows), w.openSecs
	for i := from; i < n; i++ {
		weight := math.Exp(-max(w.age[i], 0) / tau)
		if i < climb {
			weight *= fade
		}
		wIDs += weight * float64(w.ids[i])
		wRows += weight * float64(w.rows[i])
		wSecs += weight * w.cover[i]
	}
	if wSecs <= 0 || wIDs <= 0 {
		return 0, 0
	}
	return wIDs / wSecs, wRows / wSecs
}

// pacedSince is the index of the first batch of the trailing run of paced
// batches, when the last two were paced; -1 otherwise.
func pacedSince(paced []bool) int {
	n := len(paced)
	if n < 2 || !paced[n-1] || !paced[n-2] {
		return -1
	}
	i := n - 2
	for i > 0 && paced[i-1] {
		i--
	}
	return i
}

// climbEnd is the index of the batch, from p on, that ends the closed
// loop's climb from its floor: the first that reached its ceiling or saw
// the duty cut. The batches before it ran below the duty the loop went on
// to hold, a few seconds at the start of pacing that a rate over the whole
// run carried for minutes (at 10% of a two-minute copy under load the ETA
// was 17-48% too long, BENCHMARKS.md); from the first cut on, the ups and
// downs are the loop's regulation and all count. Returns p when batch p
// already ended it, and -1 when the duty has only risen so far (still
// climbing, or an open loop's fixed duty), or rose for longer than
// climbMax: then it is the rate the loop holds, not a transient.
func climbEnd(w window, p int) int {
	n := len(w.cover)
	if len(w.lowDuty) != n || len(w.endDuty) != n || len(w.highDuty) != n {
		return -1
	}
	secs := 0.0
	for i := p; i < n && secs <= climbMax.Seconds(); i++ {
		cutBefore := i > p && w.lowDuty[i] < cutRatio*w.endDuty[i-1]
		cutIn := w.endDuty[i] < cutRatio*w.highDuty[i]
		if cutBefore || cutIn || w.highDuty[i] >= cutRatio*closedLoopMaxDuty {
			return i
		}
		secs += w.cover[i]
	}
	return -1
}

// rampEnd is the index of the first batch after the start-up ramp: a run
// starts with small batches the optimizer grows fourfold each time, whose
// fixed costs (claiming, reading the range) make the rows per second a
// fraction of what follows. They are the leading batches shorter than half
// the median batch; they count only while fewer than 3 batches follow.
func rampEnd(cover []float64) int {
	if len(cover) < 4 {
		return 0
	}
	sorted := slices.Clone(cover)
	slices.Sort(sorted)
	half := sorted[len(sorted)/2] / 2
	i := 0
	for i < len(cover) && cover[i] < half {
		i++
	}
	if len(cover)-i < 3 {
		return 0
	}
	return i
}

// Job is one row of batched_background_migration_jobs, with the error of
// its last transition (none once a retry succeeded; a mark-finished note
// stays).
type Job struct {
	ID           int64      `json:"id"`
	MigrationID  int64      `json:"batched_background_migration_id"`
	Status       JobStatus  `json:"status"`
	MinValue     int64      `json:"min_value"`
	MaxValue     int64      `json:"max_value"`
	BatchSize    int        `json:"batch_size"`
	SubBatchSize int        `json:"sub_batch_size"`
	Attempts     int        `json:"attempts"`
	PauseMs      int        `json:"pause_ms"`
	RowsDone     int64      `json:"rows_done"`
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at"`
	FinishedAt   *time.Time `json:"finished_at"`
	Worker       *string    `json:"worker_identity"`
	ErrorClass   *string    `json:"exception_class,omitempty"`
	ErrorMessage *string    `json:"exception_message,omitempty"`
	// Metrics is the job's metrics JSON (timings, pacing); left out of
	// lists' JSON, where it would dwarf the rest.
	Metrics json.RawMessage `json:"-"`
}

const jobSQL = `SELECT j.id, j.batched_background_migration_id, j.status, coalesce(j.min_value, 0), coalesce(j.max_value, 0),
		j.batch_size, j.sub_batch_size, j.attempts, j.pause_ms, j.rows_done, j.created_at, j.started_at, j.finished_at,
		j.worker_identity, l.exception_class, l.exception_message, j.metrics
	FROM batched_background_migration_jobs j
	LEFT JOIN LATERAL (SELECT exception_class, exception_message FROM batched_background_migration_job_transition_logs
	                   WHERE batched_background_migration_job_id = j.id
	                   ORDER BY id DESC LIMIT 1) l ON true`

func collectJobs(rows pgx.Rows) ([]Job, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Job, error) {
		var j Job
		var metrics []byte
		err := r.Scan(&j.ID, &j.MigrationID, &j.Status, &j.MinValue, &j.MaxValue, &j.BatchSize, &j.SubBatchSize, &j.Attempts,
			&j.PauseMs, &j.RowsDone, &j.CreatedAt, &j.StartedAt, &j.FinishedAt, &j.Worker, &j.ErrorClass, &j.ErrorMessage, &metrics)
		j.Metrics = metrics
		return j, err
	})
}

// Jobs returns the migration's latest jobs (failedOnly: only failed ones).
func (e *Engine) Jobs(ctx context.Context, id int64, failedOnly bool, limit int) ([]Job, error) {
	if limit < 0 {
		return nil, fmt.Errorf("%w: limit must be >= 0, got %d", ErrInvalidOption, limit)
	}
	rows, err := e.pool.Query(ctx, jobSQL+`
		WHERE j.batched_background_migration_id = $1 AND (NOT $2 OR j.status = 2)
		ORDER BY j.id DESC LIMIT $3`, id, failedOnly, limit)
	if err != nil {
		return nil, err
	}
	return collectJobs(rows)
}

// Job returns one job of migration id.
func (e *Engine) Job(ctx context.Context, id, jobID int64) (*Job, error) {
	rows, err := e.pool.Query(ctx, jobSQL+` WHERE j.batched_background_migration_id = $1 AND j.id = $2`, id, jobID)
	if err != nil {
		return nil, err
	}
	jobs, err := collectJobs(rows)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("%w: migration %s has no job %d", ErrNotFound, Ref(e.database, id), jobID)
	}
	return &jobs[0], nil
}

// Transition is one row of a job's transition log.
type Transition struct {
	ID               int64     `json:"id"`
	JobID            int64     `json:"batched_background_migration_job_id"`
	PreviousStatus   JobStatus `json:"previous_status"`
	NextStatus       JobStatus `json:"next_status"`
	ExceptionClass   string    `json:"exception_class"`
	ExceptionMessage string    `json:"exception_message"`
	CreatedAt        time.Time `json:"created_at"`
}

// Transitions returns a job's transition log, oldest first.
func (e *Engine) Transitions(ctx context.Context, jobID int64) ([]Transition, error) {
	rows, err := e.pool.Query(ctx, `SELECT id, batched_background_migration_job_id, previous_status, next_status,
		coalesce(exception_class, ''), coalesce(exception_message, ''), created_at
		FROM batched_background_migration_job_transition_logs WHERE batched_background_migration_job_id = $1 ORDER BY created_at, id`, jobID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Transition, error) {
		var t Transition
		err := r.Scan(&t.ID, &t.JobID, &t.PreviousStatus, &t.NextStatus, &t.ExceptionClass, &t.ExceptionMessage, &t.CreatedAt)
		return t, err
	})
}

// ChartPoint is one succeeded batch of a migration's chart series.
type ChartPoint struct {
	At         time.Time `json:"at"`
	BatchSize  int64     `json:"batch_size"`
	Duration   float64   `json:"duration_s"`
	RowsPerSec float64   `json:"rows_per_second"` // the last attempt's rows / duration
}

// Chart returns up to limit succeeded batches of migration id, oldest
// first. A batch's rate is its last attempt's: started_at is that
// attempt's, and rows_done also counts the rows of attempts before it (a
// retried batch drew 2.7M rows/s), so the rows are the attempt's own
// (metrics.rows) where ferry recorded them.
func (e *Engine) Chart(ctx context.Context, id int64, limit int) ([]ChartPoint, error) {
	rows, err := e.pool.Query(ctx, `SELECT finished_at, batch_size::bigint, extract(epoch FROM finished_at - started_at)::float8,
			coalesce((metrics->>'rows')::bigint, rows_done)
		FROM (SELECT id, finished_at, started_at, batch_size, rows_done, metrics FROM batched_background_migration_jobs
			WHERE batched_background_migration_id = $1 AND status = 3 AND started_at IS NOT NULL AND finished_at IS NOT NULL
			ORDER BY id DESC LIMIT $2) r ORDER BY finished_at`, id, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ChartPoint, error) {
		var p ChartPoint
		var done int64
		err := r.Scan(&p.At, &p.BatchSize, &p.Duration, &done)
		if p.Duration > 0 {
			p.RowsPerSec = float64(done) / p.Duration
		}
		return p, err
	})
}

// JobTimings is the query timings of one finished job (metrics.timings).
type JobTimings struct {
	JobID       int64
	MigrationID int64
	Timings     map[string][]float64
}

// FinishedTimings returns up to limit finished (succeeded or failed) jobs
// with an id above after, in id order, and the id of the oldest
// unfinished job above after (nil when none): a reader that has counted
// everything below it never needs to read those jobs again.
func (e *Engine) FinishedTimings(ctx context.Context, after int64, limit int) ([]JobTimings, *int64, error) {
	rows, err := e.pool.Query(ctx, `SELECT id, batched_background_migration_id, metrics->'timings'
		FROM batched_background_migration_jobs WHERE id > $1 AND status IN (2, 3) ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, nil, err
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (JobTimings, error) {
		var t JobTimings
		var raw []byte
		if err := r.Scan(&t.JobID, &t.MigrationID, &raw); err != nil {
			return t, err
		}
		if len(raw) > 0 && json.Unmarshal(raw, &t.Timings) != nil {
			t.Timings = nil // not ferry's or GitLab's shape: no timings
		}
		return t, nil
	})
	if err != nil {
		return nil, nil, err
	}
	var open *int64
	if err := e.pool.QueryRow(ctx, `SELECT min(id) FROM batched_background_migration_jobs WHERE id > $1 AND status IN (0, 1)`, after).Scan(&open); err != nil {
		return nil, nil, err
	}
	return out, open, nil
}
