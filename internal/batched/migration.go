package batched

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/pgcatalog"
	"github.com/ferrymigrate/ferry/internal/pgerr"
)

// Status is a migration's status (GitLab's codes).
type Status int16

// Migration statuses.
const (
	Paused     Status = ferryschema.MigrationPaused
	Active     Status = ferryschema.MigrationActive
	Finished   Status = ferryschema.MigrationFinished
	Failed     Status = ferryschema.MigrationFailed
	Finalizing Status = ferryschema.MigrationFinalizing
	Finalized  Status = ferryschema.MigrationFinalized
)

func (s Status) String() string {
	switch s {
	case Paused:
		return "paused"
	case Active:
		return "active"
	case Finished:
		return "finished"
	case Failed:
		return "failed"
	case Finalizing:
		return "finalizing"
	case Finalized:
		return "finalized"
	}
	return "status_" + strconv.Itoa(int(s))
}

// MarshalText prints the name.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Done reports finished or finalized.
func (s Status) Done() bool { return s == Finished || s == Finalized }

// JobStatus is a batch job's status.
type JobStatus int16

// Job statuses.
const (
	JobPending   JobStatus = ferryschema.JobPending
	JobRunning   JobStatus = ferryschema.JobRunning
	JobFailed    JobStatus = ferryschema.JobFailed
	JobSucceeded JobStatus = ferryschema.JobSucceeded
)

func (s JobStatus) String() string {
	switch s {
	case JobPending:
		return "pending"
	case JobRunning:
		return "running"
	case JobFailed:
		return "failed"
	case JobSucceeded:
		return "succeeded"
	}
	return "status_" + strconv.Itoa(int(s))
}

// MarshalText prints the name.
func (s JobStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Migration is one row of batched_background_migrations.
type Migration struct {
	ID             int64           `json:"id"`
	Class          string          `json:"job_class_name"`
	Table          string          `json:"table_name"`
	Column         string          `json:"column_name"`
	Args           json.RawMessage `json:"job_arguments"`
	Status         Status          `json:"status"`
	MinValue       int64           `json:"min_value"`
	MaxValue       int64           `json:"max_value"`
	BatchSize      int             `json:"batch_size"`
	SubBatchSize   int             `json:"sub_batch_size"`
	MaxBatchSize   *int            `json:"max_batch_size"`
	PauseMs        int             `json:"pause_ms"`
	TotalTuples    *int64          `json:"total_tuple_count"`
	MaxParallel    int             `json:"max_parallel_batches"`
	AllowSameTable bool            `json:"allow_same_table"`
	TargetBatchMs  *int            `json:"target_batch_ms"`
	StmtTimeoutMs  int             `json:"statement_timeout_ms"`
	CreatedAt      time.Time       `json:"created_at"`
	StartedAt      *time.Time      `json:"started_at"`
	FinishedAt     *time.Time      `json:"finished_at"`
	OnHoldUntil    *time.Time      `json:"on_hold_until"`
	HoldReason     *string         `json:"hold_reason"`
	SlowUntil      *time.Time      `json:"slow_until"`
}

// tableKey is the SQL for the table alias's migration names, one value
// per table: "events" and "public.events" (and a GitLab row naming it either
// way) are one table to the one-migration-per-table rule. It is the oid of
// the table ResolveTarget would find for the name (pgcatalog.TableOIDSQL:
// catalog reads only, so no stored name makes it fail), else the text as
// stored (a dropped table, a name with two dots).
func tableKey(alias string) string {
	t := alias + ".table_name"
	schema := `CASE WHEN strpos(` + t + `, '.') = 0 THEN '' ELSE split_part(` + t + `, '.', 1) END`
	table := `CASE WHEN strpos(` + t + `, '.') = 0 THEN ` + t + `
		WHEN ` + t + ` ~ '^[^.]+[.][^.]+$' THEN split_part(` + t + `, '.', 2) END`
	return `coalesce('oid:' || ` + pgcatalog.TableOIDSQL(schema, table) + `::text, ` + t + `)`
}

const migrationCols = `id, job_class_name, table_name, column_name, job_arguments, status,
	coalesce(min_value, 1), coalesce(max_value, coalesce(min_value, 1)), batch_size, sub_batch_size, max_batch_size, pause_ms,
	total_tuple_count, max_parallel_batches, allow_same_table, target_batch_ms, statement_timeout_ms,
	created_at, started_at, finished_at, on_hold_until, hold_reason, slow_until`

func scanMigration(row pgx.Row) (*Migration, error) {
	m := &Migration{}
	var args []byte
	err := row.Scan(&m.ID, &m.Class, &m.Table, &m.Column, &args, &m.Status,
		&m.MinValue, &m.MaxValue, &m.BatchSize, &m.SubBatchSize, &m.MaxBatchSize, &m.PauseMs,
		&m.TotalTuples, &m.MaxParallel, &m.AllowSameTable, &m.TargetBatchMs, &m.StmtTimeoutMs,
		&m.CreatedAt, &m.StartedAt, &m.FinishedAt, &m.OnHoldUntil, &m.HoldReason, &m.SlowUntil)
	if err != nil {
		return nil, err
	}
	m.Args = compactJSON(args)
	return m, nil
}

func compactJSON(b []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return json.RawMessage(b)
	}
	return buf.Bytes()
}

// MigrationConfig is a migration's identifying configuration, in GitLab's
// key order.
type MigrationConfig struct {
	Class  string          `json:"job_class_name"`
	Table  string          `json:"table_name"`
	Column string          `json:"column_name"`
	Args   json.RawMessage `json:"job_arguments"`
}

// Config is the migration's identifying configuration, as GitLab prints it.
func (m *Migration) Config() MigrationConfig {
	return MigrationConfig{Class: m.Class, Table: m.Table, Column: m.Column, Args: m.Args}
}

// StatusLine is GitLab's rake status line: "<status> | <class>,<table>,<column>,<args json>".
// It is one line whatever the names hold: control characters in them are
// written as Go escapes (\n), as the JSON arguments already are.
func (m *Migration) StatusLine() string {
	return fmt.Sprintf("%s | %s,%s,%s,%s", m.Status, oneLine(m.Class), oneLine(m.Table), oneLine(m.Column), m.Args)
}

// oneLine escapes the control characters of s (strconv.Quote's escapes,
// without its quotes); s unchanged when it has none.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// FinalizeCommand is the ferry command that finalizes this migration, quoted
// for bash/sh.
func (m *Migration) FinalizeCommand() string {
	return FinalizeCommand(m.Class, m.Table, m.Column, m.Args)
}

// GitLabFinalizeCommand is the rake form GitLab prints (commas escaped).
func (m *Migration) GitLabFinalizeCommand() string {
	return GitLabFinalizeCommand(m.Class, m.Table, m.Column, m.Args)
}

// QueueOptions configure [Engine.Queue]. Zero values take defaults.
type QueueOptions struct {
	Class  string
	Table  string // optionally schema-qualified
	Column string
	Args   json.RawMessage // JSON array; empty means []

	BatchSize    int // rows per batch to start with (default 1000; adaptive)
	SubBatchSize int // rows per statement to start with (default 100; adaptive)
	PauseMs      int // sleep between sub-batches (default 0: health signals pace instead)
	MaxBatchSize int // upper bound for adaptive sizing (default 2,000,000)
	MinValue     *int64
	MaxValue     *int64
	// MaxParallel batches of this migration may run at once (default 1).
	MaxParallel int
	// AllowSameTable lets it run while another migration on the table runs.
	AllowSameTable bool
	// TargetBatch overrides the engine's target batch duration.
	TargetBatch time.Duration
	// StatementTimeout bounds each sub-batch statement (SET LOCAL
	// statement_timeout; default 15s). A statement that times out is
	// retried with half the rows.
	StatementTimeout time.Duration
	// Paused queues the migration paused.
	Paused bool
	// Version is recorded as queued_migration_version.
	Version string
}

// Defaults for [QueueOptions], as GitLab's helper.
const (
	DefaultBatchSize    = 1000
	DefaultSubBatchSize = 100
	DefaultMaxBatchSize = 2_000_000
	// DefaultStatementTimeout is the schema's default statement_timeout_ms.
	DefaultStatementTimeout = 15 * time.Second
	MinStatementTimeout     = 100 * time.Millisecond
	MaxStatementTimeout     = time.Hour
	// MaxParallelBatches bounds a migration's max_parallel_batches.
	MaxParallelBatches = 64
	// Bounds of QueueOptions.TargetBatch.
	MinTargetBatch = 50 * time.Millisecond
	MaxTargetBatch = 10 * time.Minute
	// maxInt4: sizes and pauses are integer columns.
	maxInt4 = math.MaxInt32
)

// QueueResult is what [Engine.Queue] did.
type QueueResult struct {
	Migration *Migration
	// Existing is true when the same configuration was already queued;
	// nothing was changed (GitLab warns and returns).
	Existing bool
}

// canonicalArgs parses and re-encodes a JSON array of arguments.
func canonicalArgs(raw json.RawMessage) ([]json.RawMessage, json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = json.RawMessage("[]")
	}
	var items []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&items); err != nil {
		return nil, nil, fmt.Errorf("%w: job arguments must be a JSON array: %v", ErrInvalidArgs, err)
	}
	if dec.More() {
		return nil, nil, fmt.Errorf("%w: trailing data after the JSON array", ErrInvalidArgs)
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	canon, _ := json.Marshal(items)
	return items, compactJSON(canon), nil
}

// Queue validates and records a new migration (GitLab's
// queue_batched_background_migration). The table and columns must exist;
// every identifier is looked up in pg_catalog and quoted, never spliced.
// Queueing the same configuration twice is a no-op (Existing is set).
func (e *Engine) Queue(ctx context.Context, o QueueOptions) (*QueueResult, error) {
	if err := CheckConfig(o.Class, o.Table, o.Column, o.Args); err != nil {
		return nil, err
	}
	cls, ok := e.reg.Lookup(o.Class)
	if !ok {
		return nil, fmt.Errorf("%w: %q (registered: %s)", ErrUnknownClass, o.Class, strings.Join(e.reg.Names(), ", "))
	}
	items, canon, err := canonicalArgs(o.Args)
	if err != nil {
		return nil, err
	}
	if len(items) != cls.NumArgs {
		return nil, &ArgCountError{Class: cls.Name, Given: len(items), Wanted: cls.NumArgs}
	}
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.SubBatchSize == 0 {
		o.SubBatchSize = min(DefaultSubBatchSize, o.BatchSize)
	}
	if o.MaxBatchSize == 0 {
		o.MaxBatchSize = max(DefaultMaxBatchSize, o.BatchSize)
	}
	if o.MaxParallel == 0 {
		o.MaxParallel = 1
	}
	switch {
	case o.BatchSize < 1 || o.BatchSize > maxInt4:
		return nil, fmt.Errorf("%w: batch size must be between 1 and %d, got %d", ErrInvalidOption, maxInt4, o.BatchSize)
	case o.MaxBatchSize > maxInt4:
		return nil, fmt.Errorf("%w: max batch size must be at most %d, got %d", ErrInvalidOption, maxInt4, o.MaxBatchSize)
	case o.PauseMs > maxInt4:
		return nil, fmt.Errorf("%w: pause must be at most %d ms, got %d", ErrInvalidOption, maxInt4, o.PauseMs)
	case o.SubBatchSize < 1 || o.SubBatchSize > o.BatchSize:
		return nil, fmt.Errorf("%w: sub-batch size must be between 1 and the batch size (%d), got %d", ErrInvalidOption, o.BatchSize, o.SubBatchSize)
	case o.MaxBatchSize < o.BatchSize:
		return nil, fmt.Errorf("%w: max batch size (%d) must be >= batch size (%d)", ErrInvalidOption, o.MaxBatchSize, o.BatchSize)
	case o.PauseMs < 0:
		return nil, fmt.Errorf("%w: pause must be >= 0 ms, got %d", ErrInvalidOption, o.PauseMs)
	case o.MaxParallel < 1 || o.MaxParallel > MaxParallelBatches:
		return nil, fmt.Errorf("%w: parallelism must be between 1 and %d, got %d", ErrInvalidOption, MaxParallelBatches, o.MaxParallel)
	case o.TargetBatch != 0 && (o.TargetBatch < MinTargetBatch || o.TargetBatch > MaxTargetBatch):
		return nil, fmt.Errorf("%w: target batch duration must be between %s and %s, got %s", ErrInvalidOption, MinTargetBatch, MaxTargetBatch, o.TargetBatch)
	case o.StatementTimeout != 0 && (o.StatementTimeout < MinStatementTimeout || o.StatementTimeout > MaxStatementTimeout):
		// Below 100ms ordinary plan and I/O hiccups time statements out;
		// above an hour a sub-batch holds its row locks for too long.
		return nil, fmt.Errorf("%w: statement timeout must be between %s and %s, got %s", ErrInvalidOption, MinStatementTimeout, MaxStatementTimeout, o.StatementTimeout)
	case o.StatementTimeout%time.Millisecond != 0:
		return nil, fmt.Errorf("%w: statement timeout must be whole milliseconds, got %s", ErrInvalidOption, o.StatementTimeout)
	case o.MinValue != nil && o.MaxValue != nil && *o.MaxValue < *o.MinValue:
		return nil, fmt.Errorf("%w: max value %d is below min value %d", ErrInvalidOption, *o.MaxValue, *o.MinValue)
	}
	tgt, err := ResolveTarget(ctx, e.pool, o.Table, o.Column)
	if err != nil {
		return nil, err
	}
	if err := tgt.checkBatchingColumn(); err != nil {
		return nil, err
	}
	plan, err := cls.Plan(PlanContext{Target: tgt, Args: items, Queueing: true, Resolve: func(table, column string) (*Target, error) {
		return ResolveTarget(ctx, e.pool, table, column)
	}})
	if err != nil {
		return nil, err
	}
	// Stored as given (GitLab stores the name the developer wrote, and a
	// schema written on purpose must survive other search paths); the
	// duplicate check matches every spelling of the same table.
	tableName := o.Table

	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Serialise queueing of one configuration so "twice => no-op" holds
	// under concurrency.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, cls.Name+"|"+strconv.FormatUint(uint64(tgt.OID), 10)+"|"+o.Column+"|"+string(canon)); err != nil {
		return nil, err
	}
	if m, err := scanMigration(tx.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations
		WHERE job_class_name = $1 AND table_name = ANY($2) AND column_name = $3 AND job_arguments = $4::jsonb ORDER BY id LIMIT 1`,
		cls.Name, tgt.spellings(tableName), o.Column, string(canon))); err == nil {
		// Not logged here: the caller reports Existing, once.
		return &QueueResult{Migration: m, Existing: true}, nil
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if err := e.checkSet(ctx, tx, tgt, plan); err != nil {
		return nil, err
	}
	// Bounds and estimate. The column is quoted; the table is the oid
	// resolved above.
	col := Quote(o.Column)
	var lo, hi *int64
	if err := tx.QueryRow(ctx, `SELECT min(`+col+`)::bigint, max(`+col+`)::bigint FROM `+tgt.Ident()).Scan(&lo, &hi); err != nil {
		return nil, fmt.Errorf("bbm: read bounds of %s: %w", tgt.Ident(), err)
	}
	minV, maxV := int64(1), int64(1)
	if lo != nil {
		minV, maxV = *lo, *hi
	}
	if o.MinValue != nil {
		minV = *o.MinValue
	}
	if o.MaxValue != nil {
		maxV = *o.MaxValue
	}
	if lo != nil && maxV < minV {
		// One bound given, beyond the other end of the column's values: a
		// typo that would otherwise queue a finished migration that
		// copied nothing.
		return nil, fmt.Errorf("%w: the range %d..%d is empty (%s holds %d..%d)", ErrInvalidOption, minV, maxV, Quote(o.Column), *lo, *hi)
	}
	status := Active
	if o.Paused {
		status = Paused
	}
	empty := lo == nil || maxV < minV
	if empty {
		status, maxV = Finished, max(minV, maxV)
		if maxV < minV {
			maxV = minV
		}
	}
	var estimate int64
	_ = tx.QueryRow(ctx, `SELECT CASE WHEN reltuples > 0 THEN reltuples::bigint ELSE -1 END FROM pg_class WHERE oid = $1`, tgt.OID).Scan(&estimate)
	switch {
	case empty:
		estimate = 0
	case estimate < 0:
		// Never analysed: the id span is a cheap upper bound.
		estimate = maxV - minV + 1
	}
	var targetMs *int
	if o.TargetBatch > 0 {
		v := int(o.TargetBatch / time.Millisecond)
		targetMs = &v
	}
	stmtTimeoutMs := int(DefaultStatementTimeout / time.Millisecond)
	if o.StatementTimeout > 0 {
		stmtTimeoutMs = int(o.StatementTimeout / time.Millisecond)
	}
	var version *string
	if o.Version != "" {
		version = &o.Version
	}
	interval := int(e.targetFor(targetMs).Round(time.Second) / time.Second)
	m, err := scanMigration(tx.QueryRow(ctx, `
		INSERT INTO batched_background_migrations
			(job_class_name, table_name, column_name, job_arguments, status, min_value, max_value,
			 batch_size, sub_batch_size, max_batch_size, pause_ms, total_tuple_count, "interval",
			 max_parallel_batches, allow_same_table, target_batch_ms, queued_migration_version,
			 statement_timeout_ms, started_at, finished_at)
		VALUES ($1, $2, $3, $4::jsonb, $5::smallint, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
			CASE WHEN $5::smallint = 1 THEN now() END, CASE WHEN $5::smallint = 3 THEN now() END)
		RETURNING `+migrationCols,
		cls.Name, tableName, o.Column, string(canon), status, minV, maxV,
		o.BatchSize, o.SubBatchSize, o.MaxBatchSize, o.PauseMs, estimate, min(interval, 32767),
		o.MaxParallel, o.AllowSameTable, targetMs, version, stmtTimeoutMs))
	if err != nil {
		return nil, fmt.Errorf("bbm: insert migration: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	e.log.Info("batched background migration queued", zapMigration(m)...)
	return &QueueResult{Migration: m}, nil
}

// checkSet has PostgreSQL parse a Set plan's UPDATE (EXPLAIN, which runs
// nothing), so that a statement every batch would fail on (text copied
// into bigint, a function that does not exist) is refused when queued,
// not found by the first batch. It runs in the queueing transaction, in a
// savepoint rolled back at once: parsing an UPDATE takes the table's
// RowExclusiveLock, which must not outlive the check nor wait long behind
// an ALTER TABLE or CREATE INDEX (bbm.lock_timeout). A check that cannot
// run (a lock wait, no UPDATE privilege for this role) is skipped with a
// warning: the batches report such a problem themselves.
func (e *Engine) checkSet(ctx context.Context, tx pgx.Tx, tgt *Target, plan *Plan) error {
	if plan == nil || plan.Set == "" || plan.Skip {
		return nil
	}
	if _, err := tx.Exec(ctx, `SAVEPOINT ferry_check_set`); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `SET LOCAL lock_timeout = `+strconv.FormatInt(e.health.LockTimeout.Milliseconds(), 10))
	if err == nil {
		_, err = tx.Exec(ctx, `EXPLAIN UPDATE `+tgt.Ident()+` AS t SET `+plan.Set+` WHERE false`+plan.andWhere())
	}
	if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT ferry_check_set`); rerr != nil {
		return rerr
	}
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe) && pe.Code == "42501", isLockTimeout(err):
		e.log.Warn("could not check the migration's statement before queueing; its batches will", zap.String("table", tgt.Ident()), zap.Error(err))
		return nil
	case errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42"): // syntax error or access rule violation
		return fmt.Errorf("%w: every batch would fail: %w", ErrInvalidArgs, pgerr.WithDetails(err))
	}
	return fmt.Errorf("bbm: check the migration's statement on %s: %w", tgt.Ident(), err)
}
