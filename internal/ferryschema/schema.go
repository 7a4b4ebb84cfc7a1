package ferryschema

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// Status codes of batched_background_migrations.status (GitLab's enum).
const (
	MigrationPaused     = 0
	MigrationActive     = 1
	MigrationFinished   = 3
	MigrationFailed     = 4
	MigrationFinalizing = 5
	MigrationFinalized  = 6
)

// Status codes of batched_background_migration_jobs.status (GitLab's enum).
const (
	JobPending   = 0
	JobRunning   = 1
	JobFailed    = 2
	JobSucceeded = 3
)

// Status codes of background_migration_jobs.status (legacy tracking).
const (
	LegacyPending   = 0
	LegacySucceeded = 1
)

// LockKey is the advisory lock [Apply] holds while upgrading ("ferrysch").
const LockKey int64 = 0x6665727279736368

// ErrApply wraps every failure of [Apply].
var ErrApply = errors.New("schema: apply")

// ErrNewerSchema: the database's ferry tables were set up by a newer ferry
// than this binary (or restored from a backup of one). [Apply] refuses
// rather than report a version it does not know as current.
var ErrNewerSchema = errors.New("ferry schema is newer than this binary")

// VersionTable records the applied versions.
const VersionTable = "ferry_schema_versions"

// Latest is the newest version this binary knows.
func Latest() int { return versions[len(versions)-1].ID }

// NewerError is the [ErrNewerSchema] error for ferry tables at version v;
// whose names them ("the database's").
func NewerError(whose string, v int) error {
	return fmt.Errorf("%w: %s ferry tables are at version %d, but this ferry knows versions up to %d; "+
		"use the ferry release that wrote them, or a newer one", ErrNewerSchema, whose, v, Latest())
}

// Version is one schema step.
type Version struct {
	ID   int
	Name string
	SQL  string
}

// Versions returns the schema steps in order. A released step is never
// edited; changes go into a new one.
func Versions() []Version { return append([]Version(nil), versions...) }

var versions = []Version{
	{ID: 1, Name: "batched background migrations", SQL: v1},
	{ID: 2, Name: "shared pacing clock, finalizer session", SQL: v2},
	{ID: 3, Name: "engine session heartbeats, claim tokens", SQL: v3},
	{ID: 4, Name: "web UI action audit", SQL: v4},
	{ID: 5, Name: "legacy tracking rows marked by an operator", SQL: v5},
}

const v1 = `
CREATE TABLE IF NOT EXISTS batched_background_migrations (
	id bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	min_value bigint DEFAULT 1,
	max_value bigint,
	batch_size integer NOT NULL,
	sub_batch_size integer NOT NULL,
	"interval" smallint NOT NULL DEFAULT 0,
	status smallint NOT NULL DEFAULT 0,
	job_class_name text NOT NULL CHECK (char_length(job_class_name) <= 100),
	batch_class_name text NOT NULL DEFAULT 'PrimaryKeyBatchingStrategy' CHECK (char_length(batch_class_name) <= 100),
	table_name text NOT NULL CHECK (char_length(table_name) <= 127),
	column_name text NOT NULL CHECK (char_length(column_name) <= 63),
	job_arguments jsonb NOT NULL DEFAULT '[]',
	total_tuple_count bigint,
	pause_ms integer NOT NULL DEFAULT 0,
	max_batch_size integer,
	started_at timestamptz,
	on_hold_until timestamptz,
	gitlab_schema text NOT NULL DEFAULT 'gitlab_main',
	finished_at timestamptz,
	queued_migration_version text,
	min_cursor jsonb,
	max_cursor jsonb,
	-- ferry's own columns:
	-- how many batches of this migration may run at once (GitLab: always 1).
	max_parallel_batches integer NOT NULL DEFAULT 1 CHECK (max_parallel_batches BETWEEN 1 AND 64),
	-- run even while another migration on the same table runs.
	allow_same_table boolean NOT NULL DEFAULT false,
	-- adaptive sizing aims each batch at this duration (NULL: worker config).
	target_batch_ms integer,
	-- per sub-batch statement_timeout.
	statement_timeout_ms integer NOT NULL DEFAULT 15000,
	-- health throttling: why it is on hold / slowed, and how often in a row.
	hold_reason text,
	hold_count integer NOT NULL DEFAULT 0,
	slow_until timestamptz,
	CONSTRAINT check_batch_size CHECK (batch_size >= sub_batch_size),
	CONSTRAINT check_positive_sub_batch_size CHECK (sub_batch_size > 0),
	CONSTRAINT check_max_value_in_range CHECK (max_value >= min_value)
);
CREATE INDEX IF NOT EXISTS index_batched_migrations_on_job_table_and_column_name
	ON batched_background_migrations (job_class_name, table_name, column_name);
CREATE INDEX IF NOT EXISTS index_batched_migrations_on_status
	ON batched_background_migrations (status);

CREATE TABLE IF NOT EXISTS batched_background_migration_jobs (
	id bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	started_at timestamptz,
	finished_at timestamptz,
	batched_background_migration_id bigint NOT NULL REFERENCES batched_background_migrations (id) ON DELETE CASCADE,
	min_value bigint,
	max_value bigint,
	batch_size integer NOT NULL,
	sub_batch_size integer NOT NULL,
	status smallint NOT NULL DEFAULT 0,
	attempts smallint NOT NULL DEFAULT 0,
	metrics jsonb NOT NULL DEFAULT '{}',
	pause_ms integer NOT NULL DEFAULT 0,
	min_cursor jsonb,
	max_cursor jsonb,
	-- ferry's own columns:
	-- last batching-column value done; committed with each sub-batch, so a
	-- retry resumes after it and no row is migrated twice.
	cursor_value bigint,
	-- rows actually touched by succeeded sub-batches.
	rows_done bigint NOT NULL DEFAULT 0,
	-- who runs it: the Sidekiq process identity, and the engine session whose
	-- advisory lock proves the process is alive.
	worker_identity text,
	worker_session bigint
);
CREATE INDEX IF NOT EXISTS index_batched_jobs_on_batched_migration_id_and_id
	ON batched_background_migration_jobs (batched_background_migration_id, id);
CREATE INDEX IF NOT EXISTS index_batched_jobs_on_batched_migration_id_and_max_value
	ON batched_background_migration_jobs (batched_background_migration_id, max_value);
CREATE INDEX IF NOT EXISTS index_batched_jobs_on_batched_migration_id_and_status
	ON batched_background_migration_jobs (batched_background_migration_id, status);
-- running jobs are few; this keeps stuck-job and capacity checks cheap.
CREATE INDEX IF NOT EXISTS index_batched_jobs_running
	ON batched_background_migration_jobs (batched_background_migration_id) WHERE status = 1;

-- GitLab partitions this table monthly; ferry keeps one table with the same
-- columns and primary key shape.
CREATE TABLE IF NOT EXISTS batched_background_migration_job_transition_logs (
	id bigserial NOT NULL,
	batched_background_migration_job_id bigint NOT NULL REFERENCES batched_background_migration_jobs (id) ON DELETE CASCADE,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	previous_status smallint NOT NULL,
	next_status smallint NOT NULL,
	exception_class text CHECK (char_length(exception_class) <= 100),
	exception_message text CHECK (char_length(exception_message) <= 1000),
	PRIMARY KEY (id, created_at)
);
CREATE INDEX IF NOT EXISTS i_batched_background_migration_job_transition_logs_on_job_id
	ON batched_background_migration_job_transition_logs (batched_background_migration_job_id);

CREATE TABLE IF NOT EXISTS background_migration_jobs (
	id bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	status smallint NOT NULL DEFAULT 0,
	class_name text NOT NULL CHECK (char_length(class_name) <= 200),
	arguments jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS index_background_migration_jobs_on_class_name_and_arguments
	ON background_migration_jobs (class_name, arguments);
CREATE INDEX IF NOT EXISTS index_background_migration_jobs_on_class_name_and_status_and_id
	ON background_migration_jobs (class_name, status, id);

CREATE TABLE IF NOT EXISTS ferry_bbm_settings (
	id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	max_running integer NOT NULL DEFAULT 2 CHECK (max_running >= 0),
	paused_all boolean NOT NULL DEFAULT false,
	updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ferry_bbm_settings (id) VALUES (1) ON CONFLICT DO NOTHING;

-- engine sessions: each engine holds an advisory lock on its number for its
-- lifetime, so a killed process is visible at once in pg_locks.
CREATE SEQUENCE IF NOT EXISTS ferry_bbm_session_seq;
`

// v2: the pacing clock that all paced sub-batches of the database share
// (internal/batched/contention.go): the earliest time the next one may start; and
// the engine session of a migration's finalizer, so a finalize whose
// process died gives the migration back to the workers.
const v2 = `
CREATE TABLE IF NOT EXISTS ferry_bbm_pace (
	id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	next_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO ferry_bbm_pace (id) VALUES (1) ON CONFLICT DO NOTHING;
ALTER TABLE batched_background_migrations ADD COLUMN IF NOT EXISTS finalizer_session bigint;
`

// v3: engine sessions heartbeat a row (internal/batched/session.go), so an engine
// whose connection was lost (a restart, a failover) is not taken for dead;
// and every claim of a batch carries its own token, which every write of
// the batch checks, so two claims of one batch can never both write.
const v3 = `
CREATE TABLE IF NOT EXISTS ferry_bbm_sessions (
	id bigint PRIMARY KEY,
	identity text NOT NULL,
	started_at timestamptz NOT NULL DEFAULT now(),
	heartbeat_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE batched_background_migration_jobs ADD COLUMN IF NOT EXISTS claim_token bigint;
`

// v4: the web UI's audit table (who did what from where), which `ferry web`
// used to create itself. GitLab's transition log needs a job id, which
// actions on a migration do not have. IF NOT EXISTS: web servers of
// earlier releases made it already.
const v4 = `
CREATE TABLE IF NOT EXISTS ferry_web_actions (
	id bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now(),
	actor text NOT NULL,
	remote_addr text NOT NULL DEFAULT '',
	action text NOT NULL,
	target text NOT NULL DEFAULT '',
	migration_id bigint,
	error text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ferry_web_actions_migration_id ON ferry_web_actions (migration_id, id);
`

// v5: who marked a legacy tracking row done by hand, and how (`ferry bm
// mark`: "succeeded" after running it elsewhere, or "skipped"). Such rows
// get status succeeded, so GitLab's pending checks pass.
const v5 = `
ALTER TABLE background_migration_jobs
	ADD COLUMN IF NOT EXISTS ferry_marked text,
	ADD COLUMN IF NOT EXISTS ferry_marked_by text,
	ADD COLUMN IF NOT EXISTS ferry_marked_at timestamptz;
`

// Querier is what [Apply] needs: a pool or a single connection.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var _ Querier = (*pgxpool.Pool)(nil)

// Apply creates or upgrades ferry's tables. It is idempotent and holds an
// advisory lock so concurrent callers (several workers starting at once)
// apply each version exactly once.
func Apply(ctx context.Context, db Querier) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrApply, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, LockKey); err != nil {
		return fmt.Errorf("%w: lock: %w", ErrApply, err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS ferry_schema_versions (
		version integer PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("%w: version table: %w", ErrApply, err)
	}
	applied := map[int]bool{}
	newest := 0
	rows, err := tx.Query(ctx, `SELECT version FROM ferry_schema_versions`)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrApply, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return fmt.Errorf("%w: %w", ErrApply, err)
		}
		applied[v] = true
		newest = max(newest, v)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrApply, err)
	}
	if newest > Latest() {
		return fmt.Errorf("%w: %w", ErrApply, NewerError("the database's", newest))
	}
	changed := false
	for _, v := range versions {
		if applied[v.ID] {
			continue
		}
		if _, err := tx.Exec(ctx, v.SQL); err != nil {
			return fmt.Errorf("%w: version %d (%s): %w", ErrApply, v.ID, v.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ferry_schema_versions (version, name) VALUES ($1, $2)`, v.ID, v.Name); err != nil {
			return fmt.Errorf("%w: record version %d: %w", ErrApply, v.ID, err)
		}
		changed = true
	}
	if !changed {
		return nil // rollback releases the lock; nothing to keep
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%w: commit: %w", ErrApply, err)
	}
	return nil
}

// Current returns the highest applied version (0 when none).
func Current(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var v int
	err := db.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM ferry_schema_versions`).Scan(&v)
	return v, err
}

// Ensure is Apply for processes that use ferry's tables: tables of a newer
// ferry are left alone with a warning, since during a rolling deploy an
// older worker that restarts after the new release upgraded them must come
// back up (versions only add). `ferry setup` uses Apply, which refuses, so
// an operator sees it.
func Ensure(ctx context.Context, db Querier, log *zap.Logger) error {
	err := Apply(ctx, db)
	if errors.Is(err, ErrNewerSchema) {
		log.Warn("ferry's tables were set up by a newer ferry; running on them as they are (upgrade this binary)", zap.Error(err))
		return nil
	}
	return err
}
