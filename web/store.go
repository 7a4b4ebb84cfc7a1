package web

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/jobs/bbm"
	"github.com/ferrymigrate/ferry/schema"
)

// Migration and job status codes: GitLab's, named once in schema
// (gitlab-background-migrations.md §1.1-1.2).
const (
	StatusPaused     = schema.MigrationPaused
	StatusActive     = schema.MigrationActive
	StatusFinished   = schema.MigrationFinished
	StatusFailed     = schema.MigrationFailed
	StatusFinalizing = schema.MigrationFinalizing
	StatusFinalized  = schema.MigrationFinalized

	JobPending   = schema.JobPending
	JobRunning   = schema.JobRunning
	JobFailed    = schema.JobFailed
	JobSucceeded = schema.JobSucceeded
)

// StatusName is the humanized migration status.
func StatusName(s int16) string { return bbm.Status(s).String() }

// JobStatusName is the humanized job status.
func JobStatusName(s int16) string { return bbm.JobStatus(s).String() }

// Tab is one of the index tabs of the background migrations page.
type Tab string

// The tabs, as GitLab's ?tab= values.
const (
	TabQueued     Tab = "queued"
	TabFinalizing Tab = "finalizing"
	TabFailed     Tab = "failed"
	TabFinished   Tab = "finished"
)

// Tabs lists the tabs in display order.
var Tabs = []Tab{TabQueued, TabFinalizing, TabFailed, TabFinished}

func (t Tab) statuses() []int16 {
	switch t {
	case TabQueued:
		return []int16{StatusActive, StatusPaused}
	case TabFinalizing:
		return []int16{StatusFinalizing}
	case TabFailed:
		return []int16{StatusFailed}
	case TabFinished:
		return []int16{StatusFinished, StatusFinalized}
	}
	return nil
}

// Title is the tab's label.
func (t Tab) Title() string { return strings.ToUpper(string(t[:1])) + string(t[1:]) }

// Migration is one batched_background_migrations row plus what the UI
// derives from its jobs.
type Migration struct {
	ID              int64
	JobClassName    string
	TableName       string
	ColumnName      string
	JobArguments    string
	Status          int16
	BatchSize       int64
	SubBatchSize    int64
	MaxBatchSize    *int64
	MinValue        *int64
	MaxValue        *int64
	TotalTupleCount *int64
	Interval        int64 // seconds
	PauseMS         int64
	CreatedAt       time.Time
	UpdatedAt       time.Time
	StartedAt       *time.Time
	FinishedAt      *time.Time
	OnHoldUntil     *time.Time
	OnHoldReason    string // from an engine column if present

	// Derived from the jobs.
	MigratedTuples int64  // SUM(batch_size) of succeeded jobs, GitLab's definition
	Cursor         *int64 // highest max_value of any job created so far
	UnfinishedIDs  int64  // id span of jobs not yet succeeded
	FailedJobs     int64
	JobCount       int64
	Window         Window // recent succeeded jobs, for rates

	Progress Progress
}

// Identifier is GitLab's migration_identifier label: "Class/table.column".
func (m *Migration) Identifier() string {
	return m.JobClassName + "/" + m.TableName + "." + m.ColumnName
}

// StatusName is the humanized status.
func (m *Migration) StatusName() string { return StatusName(m.Status) }

// FinalizeCommand is what an operator runs to finish the migration
// synchronously (commas in the arguments escaped as in GitLab's rake task).
func (m *Migration) FinalizeCommand() string {
	return fmt.Sprintf("ferry bbm finalize %s %s %s '%s'", m.JobClassName, m.TableName, m.ColumnName,
		strings.ReplaceAll(m.JobArguments, "'", `'\''`))
}

// Job is one batched_background_migration_jobs row.
type Job struct {
	ID           int64
	MigrationID  int64
	MinValue     *int64
	MaxValue     *int64
	BatchSize    int64
	SubBatchSize int64
	Status       int16
	Attempts     int64
	PauseMS      int64
	CreatedAt    time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
	Metrics      string
	// LastError is the exception of the latest transition to failed.
	LastErrorClass   string
	LastErrorMessage string
}

// StatusName is the humanized status.
func (j *Job) StatusName() string { return JobStatusName(j.Status) }

// Duration is finished_at - started_at, 0 if unknown.
func (j *Job) Duration() time.Duration {
	if j.StartedAt == nil || j.FinishedAt == nil {
		return 0
	}
	return j.FinishedAt.Sub(*j.StartedAt)
}

// Transition is one batched_background_migration_job_transition_logs row.
type Transition struct {
	ID               int64
	JobID            int64
	PreviousStatus   int16
	NextStatus       int16
	ExceptionClass   string
	ExceptionMessage string
	CreatedAt        time.Time
}

// ErrNotFound is returned for an unknown migration or job id.
var ErrNotFound = errors.New("not found")

// ErrNoTables means the background migration tables do not exist yet.
var ErrNoTables = errors.New("background migration tables are missing (run `ferry setup`)")

// store reads the GitLab-compatible tables. Columns beyond GitLab's core
// set are optional: the schema evolves with the engine, and the UI must
// keep working on an older or newer one, so it asks information_schema
// which exist (cached briefly) and selects NULL for the others.
type store struct {
	db  *pgxpool.Pool
	now func() time.Time

	mu       sync.Mutex
	cols     map[string]map[string]bool // table -> column set
	colsTime time.Time
}

const (
	tblMigrations  = "batched_background_migrations"
	tblJobs        = "batched_background_migration_jobs"
	tblTransitions = "batched_background_migration_job_transition_logs"
)

func (s *store) columns(ctx context.Context) (map[string]map[string]bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cols != nil && s.now().Sub(s.colsTime) < 30*time.Second {
		return s.cols, nil
	}
	rows, err := s.db.Query(ctx, `SELECT table_name::text, column_name::text FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = ANY($1)`,
		[]string{tblMigrations, tblJobs, tblTransitions})
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	cols := map[string]map[string]bool{}
	for rows.Next() {
		var t, c string
		if err := rows.Scan(&t, &c); err != nil {
			return nil, err
		}
		if cols[t] == nil {
			cols[t] = map[string]bool{}
		}
		cols[t][c] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	if cols[tblMigrations] == nil || cols[tblJobs] == nil {
		return nil, ErrNoTables
	}
	s.cols, s.colsTime = cols, s.now()
	return cols, nil
}

// opt returns expr if table has col, else a typed NULL.
func opt(cols map[string]map[string]bool, table, col, expr, typ string) string {
	if cols[table][col] {
		return expr
	}
	return "NULL::" + typ
}

// holdReasonColumns are names an engine might give the on-hold reason.
var holdReasonColumns = []string{"on_hold_reason", "hold_reason"}

func (s *store) migrationSelect(cols map[string]map[string]bool) string {
	reason := "NULL::text"
	for _, c := range holdReasonColumns {
		if cols[tblMigrations][c] {
			reason = "m." + c + "::text"
			break
		}
	}
	m := tblMigrations
	return `SELECT m.id, m.job_class_name, m.table_name, m.column_name, m.job_arguments::text, m.status,
		m.batch_size::bigint, m.sub_batch_size::bigint, ` + opt(cols, m, "max_batch_size", "m.max_batch_size::bigint", "bigint") + `,
		m.min_value::bigint, m.max_value::bigint, ` + opt(cols, m, "total_tuple_count", "m.total_tuple_count", "bigint") + `,
		m.interval::bigint, ` + opt(cols, m, "pause_ms", "m.pause_ms::int", "int") + `, m.created_at, m.updated_at,
		` + opt(cols, m, "started_at", "m.started_at", "timestamptz") + `,
		` + opt(cols, m, "finished_at", "m.finished_at", "timestamptz") + `,
		` + opt(cols, m, "on_hold_until", "m.on_hold_until", "timestamptz") + `, ` + reason + `,
		COALESCE(a.migrated, 0), a.cursor, COALESCE(a.unfinished, 0), COALESCE(a.failed, 0), COALESCE(a.n, 0),
		COALESCE(w.n, 0), w.t0, w.t1, COALESCE(w.rows, 0), COALESCE(w.ids, 0), COALESCE(w.dur, 0), w.last_size
	FROM ` + tblMigrations + ` m
	LEFT JOIN LATERAL (
		SELECT (sum(j.batch_size) FILTER (WHERE j.status = 3))::bigint AS migrated,
			max(j.max_value) AS cursor,
			(sum(j.max_value - j.min_value + 1) FILTER (WHERE j.status <> 3))::bigint AS unfinished,
			count(*) FILTER (WHERE j.status = 2) AS failed,
			count(*) AS n
		FROM ` + tblJobs + ` j WHERE j.batched_background_migration_id = m.id) a ON true
	LEFT JOIN LATERAL (
		SELECT count(*) AS n, min(r.started_at) AS t0, max(r.finished_at) AS t1, sum(r.batch_size)::bigint AS rows,
			sum(r.max_value - r.min_value + 1)::bigint AS ids,
			sum(extract(epoch FROM r.finished_at - r.started_at))::float8 AS dur,
			(array_agg(r.batch_size ORDER BY r.id DESC))[1]::int AS last_size
		FROM (SELECT j.id, j.started_at, j.finished_at, j.batch_size, j.min_value, j.max_value
			FROM ` + tblJobs + ` j
			WHERE j.batched_background_migration_id = m.id AND j.status = 3
				AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
				` + windowSince(cols) + `
			ORDER BY j.id DESC LIMIT ` + fmt.Sprint(windowJobs) + `) r) w ON true`
}

// windowSince keeps the rate window to jobs of the current run: after a
// pause or retry, started_at is reset and older jobs would make the rate
// look slower than it is.
func windowSince(cols map[string]map[string]bool) string {
	if cols[tblMigrations]["started_at"] {
		return "AND (m.started_at IS NULL OR j.started_at >= m.started_at)"
	}
	return ""
}

// windowJobs is how many recent batches the rate is measured over: enough
// to smooth noise, few enough to follow the optimizer's batch size changes.
const windowJobs = 20

func scanMigration(row pgx.Row, m *Migration) error {
	var pauseMS *int32
	var reason *string
	var wn int64
	var t0, t1 *time.Time
	var wrows, wids int64
	var wdur float64
	var lastSize *int32
	err := row.Scan(&m.ID, &m.JobClassName, &m.TableName, &m.ColumnName, &m.JobArguments, &m.Status,
		&m.BatchSize, &m.SubBatchSize, &m.MaxBatchSize, &m.MinValue, &m.MaxValue, &m.TotalTupleCount,
		&m.Interval, &pauseMS, &m.CreatedAt, &m.UpdatedAt, &m.StartedAt, &m.FinishedAt, &m.OnHoldUntil, &reason,
		&m.MigratedTuples, &m.Cursor, &m.UnfinishedIDs, &m.FailedJobs, &m.JobCount,
		&wn, &t0, &t1, &wrows, &wids, &wdur, &lastSize)
	if err != nil {
		return err
	}
	if pauseMS != nil {
		m.PauseMS = int64(*pauseMS)
	}
	if reason != nil {
		m.OnHoldReason = *reason
	}
	m.Window = Window{Jobs: wn, Rows: wrows, IDs: wids, BusySeconds: wdur}
	if t0 != nil && t1 != nil {
		m.Window.Start, m.Window.End = *t0, *t1
	}
	if lastSize != nil {
		m.Window.LastBatchSize = int64(*lastSize)
	}
	return nil
}

// translate maps "relation does not exist" to ErrNoTables.
func translate(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42703") {
		return fmt.Errorf("%w: %s", ErrNoTables, pe.Message)
	}
	return err
}

// TabCounts counts the migrations of every tab.
func (s *store) TabCounts(ctx context.Context) (map[Tab]int64, error) {
	if _, err := s.columns(ctx); err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, `SELECT status, count(*) FROM `+tblMigrations+` GROUP BY status`)
	if err != nil {
		return nil, translate(err)
	}
	byStatus := map[int16]int64{}
	for rows.Next() {
		var st int16
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		byStatus[st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, translate(err)
	}
	out := map[Tab]int64{}
	for _, t := range Tabs {
		for _, st := range t.statuses() {
			out[t] += byStatus[st]
		}
	}
	return out, nil
}

// List returns one page of a tab: Queued by id ascending (execution
// order), Finished newest first, as GitLab does.
func (s *store) List(ctx context.Context, tab Tab, limit, offset int) ([]*Migration, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	order := "ASC"
	if tab == TabFinished {
		order = "DESC"
	}
	q := s.migrationSelect(cols) + ` WHERE m.status = ANY($1) ORDER BY m.id ` + order + ` LIMIT $2 OFFSET $3`
	rows, err := s.db.Query(ctx, q, tab.statuses(), limit, offset)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []*Migration
	now := s.now()
	for rows.Next() {
		m := &Migration{}
		if err := scanMigration(rows, m); err != nil {
			return nil, fmt.Errorf("scan migration: %w", err)
		}
		m.Progress = Estimate(m, now)
		out = append(out, m)
	}
	return out, translate(rows.Err())
}

// All returns every migration (for metrics).
func (s *store) All(ctx context.Context) ([]*Migration, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, s.migrationSelect(cols)+` ORDER BY m.id`)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []*Migration
	now := s.now()
	for rows.Next() {
		m := &Migration{}
		if err := scanMigration(rows, m); err != nil {
			return nil, fmt.Errorf("scan migration: %w", err)
		}
		m.Progress = Estimate(m, now)
		out = append(out, m)
	}
	return out, translate(rows.Err())
}

// Get returns one migration or ErrNotFound.
func (s *store) Get(ctx context.Context, id int64) (*Migration, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	m := &Migration{}
	err = scanMigration(s.db.QueryRow(ctx, s.migrationSelect(cols)+` WHERE m.id = $1`, id), m)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, translate(err)
	}
	m.Progress = Estimate(m, s.now())
	return m, nil
}

func (s *store) jobSelect(cols map[string]map[string]bool) string {
	j := tblJobs
	lastErr := "NULL::text, NULL::text"
	if cols[tblTransitions] != nil {
		lastErr = `(SELECT t.exception_class FROM ` + tblTransitions + ` t WHERE t.batched_background_migration_job_id = j.id AND t.next_status = 2 ORDER BY t.id DESC LIMIT 1),
		(SELECT t.exception_message FROM ` + tblTransitions + ` t WHERE t.batched_background_migration_job_id = j.id AND t.next_status = 2 ORDER BY t.id DESC LIMIT 1)`
	}
	return `SELECT j.id, j.batched_background_migration_id, j.min_value::bigint, j.max_value::bigint, j.batch_size::bigint, j.sub_batch_size::bigint,
		j.status, ` + opt(cols, j, "attempts", "j.attempts::bigint", "bigint") + `, ` + opt(cols, j, "pause_ms", "j.pause_ms::bigint", "bigint") + `,
		j.created_at, j.started_at, j.finished_at, ` + opt(cols, j, "metrics", "j.metrics::text", "text") + `, ` + lastErr + `
	FROM ` + j + ` j`
}

func scanJobs(rows pgx.Rows) ([]*Job, error) {
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		j := &Job{}
		var attempts, pause *int64
		var metrics, ec, em *string
		if err := rows.Scan(&j.ID, &j.MigrationID, &j.MinValue, &j.MaxValue, &j.BatchSize, &j.SubBatchSize,
			&j.Status, &attempts, &pause, &j.CreatedAt, &j.StartedAt, &j.FinishedAt, &metrics, &ec, &em); err != nil {
			return nil, fmt.Errorf("scan job: %w", err)
		}
		if attempts != nil {
			j.Attempts = *attempts
		}
		if pause != nil {
			j.PauseMS = *pause
		}
		if metrics != nil {
			j.Metrics = *metrics
		}
		if ec != nil {
			j.LastErrorClass = *ec
		}
		if em != nil {
			j.LastErrorMessage = *em
		}
		out = append(out, j)
	}
	return out, translate(rows.Err())
}

// Jobs returns the latest jobs of a migration, optionally only those in
// one status, newest first.
func (s *store) Jobs(ctx context.Context, migrationID int64, status *int16, limit int) ([]*Job, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	q := s.jobSelect(cols) + ` WHERE j.batched_background_migration_id = $1 AND ($2::smallint IS NULL OR j.status = $2) ORDER BY j.id DESC LIMIT $3`
	rows, err := s.db.Query(ctx, q, migrationID, status, limit)
	if err != nil {
		return nil, translate(err)
	}
	return scanJobs(rows)
}

// Job returns one job of a migration or ErrNotFound.
func (s *store) Job(ctx context.Context, migrationID, jobID int64) (*Job, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, s.jobSelect(cols)+` WHERE j.batched_background_migration_id = $1 AND j.id = $2`, migrationID, jobID)
	if err != nil {
		return nil, translate(err)
	}
	jobs, err := scanJobs(rows)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return nil, ErrNotFound
	}
	return jobs[0], nil
}

// Transitions returns a job's transition log, oldest first.
func (s *store) Transitions(ctx context.Context, jobID int64) ([]Transition, error) {
	cols, err := s.columns(ctx)
	if err != nil {
		return nil, err
	}
	if cols[tblTransitions] == nil {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `SELECT id, batched_background_migration_job_id, previous_status, next_status,
		COALESCE(exception_class, ''), COALESCE(exception_message, ''), created_at
		FROM `+tblTransitions+` WHERE batched_background_migration_job_id = $1 ORDER BY created_at, id`, jobID)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []Transition
	for rows.Next() {
		var t Transition
		if err := rows.Scan(&t.ID, &t.JobID, &t.PreviousStatus, &t.NextStatus, &t.ExceptionClass, &t.ExceptionMessage, &t.CreatedAt); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, translate(rows.Err())
}

// ChartPoint is one finished batch on the detail chart.
type ChartPoint struct {
	At         time.Time
	BatchSize  int64
	Duration   float64 // seconds
	RowsPerSec float64 // batch_size / duration
}

// Chart returns up to limit finished batches, oldest first.
func (s *store) Chart(ctx context.Context, migrationID int64, limit int) ([]ChartPoint, error) {
	if _, err := s.columns(ctx); err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, `SELECT finished_at, batch_size::bigint, extract(epoch FROM finished_at - started_at)::float8
		FROM (SELECT id, finished_at, started_at, batch_size FROM `+tblJobs+`
			WHERE batched_background_migration_id = $1 AND status = 3 AND started_at IS NOT NULL AND finished_at IS NOT NULL
			ORDER BY id DESC LIMIT $2) r ORDER BY finished_at`, migrationID, limit)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []ChartPoint
	for rows.Next() {
		var p ChartPoint
		if err := rows.Scan(&p.At, &p.BatchSize, &p.Duration); err != nil {
			return nil, err
		}
		if p.Duration > 0 {
			p.RowsPerSec = float64(p.BatchSize) / p.Duration
		}
		out = append(out, p)
	}
	return out, translate(rows.Err())
}
