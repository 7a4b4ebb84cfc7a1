package web

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// Migration and job status codes: GitLab's, named once in schema
// (gitlab-background-migrations.md §1.1-1.2).
const (
	StatusPaused     = ferryschema.MigrationPaused
	StatusActive     = ferryschema.MigrationActive
	StatusFinished   = ferryschema.MigrationFinished
	StatusFailed     = ferryschema.MigrationFailed
	StatusFinalizing = ferryschema.MigrationFinalizing
	StatusFinalized  = ferryschema.MigrationFinalized

	JobPending   = ferryschema.JobPending
	JobRunning   = ferryschema.JobRunning
	JobFailed    = ferryschema.JobFailed
	JobSucceeded = ferryschema.JobSucceeded
)

// StatusName is the humanized migration status.
func StatusName(s int16) string { return batched.Status(s).String() }

// JobStatusName is the humanized job status.
func JobStatusName(s int16) string { return batched.JobStatus(s).String() }

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

func (t Tab) statuses() []batched.Status {
	switch t {
	case TabQueued:
		return []batched.Status{batched.Active, batched.Paused}
	case TabFinalizing:
		return []batched.Status{batched.Finalizing}
	case TabFailed:
		return []batched.Status{batched.Failed}
	case TabFinished:
		return []batched.Status{batched.Finished, batched.Finalized}
	}
	return nil
}

// Title is the tab's label.
func (t Tab) Title() string { return strings.ToUpper(string(t[:1])) + string(t[1:]) }

// Migration is what the pages show of one migration: the engine's read
// model ([batched.MigrationInfo]) in the templates' terms.
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

	RowsDone   int64 // committed rows, the progress numerator
	FailedJobs int64
	JobCount   int64
	LastBatch  *batched.BatchSample

	Progress Progress
	info     *batched.MigrationInfo
	// Database is the migration's database; dbParam is its name when
	// several are shown (links carry ?database=), else "".
	Database string
	dbParam  string
}

func newMigration(v *batched.MigrationInfo) *Migration {
	i64 := func(v int64) *int64 { return &v }
	m := &Migration{ID: v.ID, JobClassName: v.Class, TableName: v.Table, ColumnName: v.Column, JobArguments: string(v.Args),
		Status: int16(v.Status), BatchSize: int64(v.BatchSize), SubBatchSize: int64(v.SubBatchSize),
		MinValue: i64(v.MinValue), MaxValue: i64(v.MaxValue), TotalTupleCount: v.TotalTuples,
		Interval: int64(v.Interval), PauseMS: int64(v.PauseMs), CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt,
		StartedAt: v.StartedAt, FinishedAt: v.FinishedAt, OnHoldUntil: v.OnHoldUntil,
		RowsDone: v.Progress.RowsDone, FailedJobs: int64(v.Progress.Failed), JobCount: int64(v.Progress.Jobs),
		LastBatch: v.LastBatch, Progress: newProgress(v.Progress), info: v}
	if v.MaxBatchSize != nil {
		m.MaxBatchSize = i64(int64(*v.MaxBatchSize))
	}
	return m
}

// Identifier is GitLab's migration_identifier label: "Class/table.column".
func (m *Migration) Identifier() string {
	return m.JobClassName + "/" + m.TableName + "." + m.ColumnName
}

// StatusName is the humanized status.
func (m *Migration) StatusName() string { return StatusName(m.Status) }

// Ref is the migration's id as GitLab prints it: ci_10 when several
// databases are shown, else 10.
func (m *Migration) Ref() string {
	return batched.Ref(m.dbParam, m.ID)
}

// DBQuery is "?database=NAME" when several databases are shown, for the
// migration's links and forms. Database names are [a-z0-9_], safe in a URL.
func (m *Migration) DBQuery() template.URL { return dbQuery("?", m.dbParam) }

// DBAmp is DBQuery after another query parameter.
func (m *Migration) DBAmp() template.URL { return dbQuery("&", m.dbParam) }

func dbQuery(sep, db string) template.URL {
	if db == "" {
		return ""
	}
	return template.URL(sep + "database=" + url.QueryEscape(db))
}

// FinalizeCommand is what an operator runs to finish the migration
// synchronously, as `ferry bbm show` prints it.
func (m *Migration) FinalizeCommand() string {
	cmd := m.info.FinalizeCommand()
	if m.dbParam != "" {
		cmd = strings.Replace(cmd, "ferry bbm finalize ", "ferry bbm finalize --db "+m.dbParam+" ", 1)
	}
	return cmd
}

// Job is one batch of a migration.
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
	RowsDone     int64
	CreatedAt    time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
	Metrics      string
	// LastError is the exception of the job's latest transition.
	LastErrorClass   string
	LastErrorMessage string
}

func newJob(j batched.Job) *Job {
	out := &Job{ID: j.ID, MigrationID: j.MigrationID, MinValue: &j.MinValue, MaxValue: &j.MaxValue, BatchSize: int64(j.BatchSize),
		SubBatchSize: int64(j.SubBatchSize), Status: int16(j.Status), Attempts: int64(j.Attempts), PauseMS: int64(j.PauseMs),
		RowsDone: j.RowsDone, CreatedAt: j.CreatedAt, StartedAt: j.StartedAt, FinishedAt: j.FinishedAt, Metrics: string(j.Metrics)}
	if j.ErrorClass != nil {
		out.LastErrorClass = *j.ErrorClass
	}
	if j.ErrorMessage != nil {
		out.LastErrorMessage = *j.ErrorMessage
	}
	return out
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

// Transition is one entry of a job's transition log.
type Transition = batched.Transition

// ChartPoint is one finished batch on the detail chart.
type ChartPoint = batched.ChartPoint

// ErrNotFound is returned for an unknown migration or job id.
var ErrNotFound = errors.New("not found")

// ErrNoTables means the background migration tables do not exist yet.
var ErrNoTables = errors.New("background migration tables are missing (run `ferry setup`)")

// store reads migrations through the engine's read model, so the pages
// say what `ferry bbm status` and /metrics say.
type store struct {
	e *batched.Engine
	// db names the database; multi: more than one is shown, so links and
	// labels name it.
	db    string
	multi bool
}

// translate maps a missing table or column to ErrNoTables and the
// engine's not-found to the UI's.
func translate(err error) error {
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42703"):
		return fmt.Errorf("%w: %s", ErrNoTables, pe.Message)
	case errors.Is(err, batched.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// TabCounts counts the migrations of every tab.
func (s *store) TabCounts(ctx context.Context) (map[Tab]int64, error) {
	byStatus, err := s.e.CountByStatus(ctx)
	if err != nil {
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
	vs, err := s.e.ListStatus(ctx, tab.statuses(), tab == TabFinished, limit, offset)
	return s.views(vs), translate(err)
}

// All returns every migration (for metrics).
func (s *store) All(ctx context.Context) ([]*Migration, error) {
	vs, err := s.e.List(ctx)
	return s.views(vs), translate(err)
}

func (s *store) views(vs []*batched.MigrationInfo) []*Migration {
	out := make([]*Migration, 0, len(vs))
	for _, v := range vs {
		out = append(out, s.view(v))
	}
	return out
}

// view is newMigration naming s's database.
func (s *store) view(v *batched.MigrationInfo) *Migration {
	m := newMigration(v)
	m.Database = s.db
	if s.multi {
		m.dbParam = s.db
	}
	return m
}

// Get returns one migration or ErrNotFound.
func (s *store) Get(ctx context.Context, id int64) (*Migration, error) {
	v, err := s.e.Get(ctx, id)
	if err != nil {
		return nil, translate(err)
	}
	return s.view(v), nil
}

// Jobs returns the latest jobs of a migration (failedOnly: only failed
// ones), newest first.
func (s *store) Jobs(ctx context.Context, migrationID int64, failedOnly bool, limit int) ([]*Job, error) {
	js, err := s.e.Jobs(ctx, migrationID, failedOnly, limit)
	if err != nil {
		return nil, translate(err)
	}
	out := make([]*Job, 0, len(js))
	for _, j := range js {
		out = append(out, newJob(j))
	}
	return out, nil
}

// Job returns one job of a migration or ErrNotFound.
func (s *store) Job(ctx context.Context, migrationID, jobID int64) (*Job, error) {
	j, err := s.e.Job(ctx, migrationID, jobID)
	if err != nil {
		return nil, translate(err)
	}
	return newJob(*j), nil
}

// Transitions returns a job's transition log, oldest first.
func (s *store) Transitions(ctx context.Context, jobID int64) ([]Transition, error) {
	ts, err := s.e.Transitions(ctx, jobID)
	return ts, translate(err)
}

// Chart returns up to limit finished batches, oldest first.
func (s *store) Chart(ctx context.Context, migrationID int64, limit int) ([]ChartPoint, error) {
	ps, err := s.e.Chart(ctx, migrationID, limit)
	return ps, translate(err)
}

// PausedAll reports whether `ferry bbm pause-all` is on.
func (s *store) PausedAll(ctx context.Context) (bool, error) {
	st, err := s.e.GetSettings(ctx)
	return st.PausedAll, translate(err)
}
