package web

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Migrations performs the operator actions on batched background
// migrations. The UI calls it and nothing else for mutations, so the
// engine's own API can be plugged in; [SQLMigrations] is the fallback that
// applies GitLab's state transitions to the tables.
type Migrations interface {
	// Pause stops scheduling new batches of an active migration.
	Pause(ctx context.Context, id int64) error
	// Resume makes a paused migration active again.
	Resume(ctx context.Context, id int64) error
	// Retry re-runs the failed batches of a failed migration and makes it
	// active again.
	Retry(ctx context.Context, id int64) error
	// Finalize starts running the rest of the migration to completion.
	// Implementations that cannot do that from a web request return
	// [ErrUnsupported].
	Finalize(ctx context.Context, id int64) error
	// MarkFinished sets the migration to finished without running the rest
	// (the operator takes responsibility for the data); actor says who.
	MarkFinished(ctx context.Context, id int64, actor string) error
}

// Errors returned by [Migrations] implementations.
var (
	// ErrInvalidState means the action does not apply to the migration's
	// current status (e.g. pausing a finished migration).
	ErrInvalidState = errors.New("action not allowed in the current status")
	// ErrUnsupported means this implementation cannot perform the action.
	ErrUnsupported = errors.New("action not supported")
)

// StateError says which status made an action invalid.
type StateError struct {
	Action string
	Status int16
}

func (e *StateError) Error() string {
	return fmt.Sprintf("cannot %s a migration that is %s", e.Action, StatusName(e.Status))
}

// Is makes errors.Is(err, ErrInvalidState) true.
func (e *StateError) Is(target error) bool { return target == ErrInvalidState }

// SQLMigrations implements [Migrations] with plain SQL on GitLab's tables,
// one transaction per action with the migration row locked, so it is safe
// next to running workers. It cannot finalize (that runs batches inline;
// use `ferry bbm finalize`).
type SQLMigrations struct {
	DB  *pgxpool.Pool
	Now func() time.Time
}

var _ Migrations = (*SQLMigrations)(nil)

func (s *SQLMigrations) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// transition moves migration id from one of from to the status to.
func (s *SQLMigrations) transition(ctx context.Context, action string, id int64, from []int16, to int16, extra func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.DB, func(tx pgx.Tx) error {
		var st int16
		err := tx.QueryRow(ctx, `SELECT status FROM `+tblMigrations+` WHERE id = $1 FOR UPDATE`, id).Scan(&st)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return translate(err)
		}
		ok := false
		for _, f := range from {
			ok = ok || f == st
		}
		if !ok {
			return &StateError{Action: action, Status: st}
		}
		if extra != nil {
			if err := extra(tx); err != nil {
				return err
			}
		}
		set := "status = $2, updated_at = $3"
		switch to {
		case StatusActive:
			set += ", started_at = $3" // GitLab resets started_at on every transition to active
		case StatusFinished:
			set += ", finished_at = $3"
		}
		_, err = tx.Exec(ctx, `UPDATE `+tblMigrations+` SET `+set+` WHERE id = $1`, id, to, s.now())
		return translate(err)
	})
}

// Pause implements [Migrations].
func (s *SQLMigrations) Pause(ctx context.Context, id int64) error {
	return s.transition(ctx, "pause", id, []int16{StatusActive}, StatusPaused, nil)
}

// Resume implements [Migrations].
func (s *SQLMigrations) Resume(ctx context.Context, id int64) error {
	return s.transition(ctx, "resume", id, []int16{StatusPaused}, StatusActive, nil)
}

// Retry implements [Migrations]: failed jobs go back to pending with their
// attempts reset (one transition log row each, as GitLab writes on every
// job transition) and the migration becomes active.
func (s *SQLMigrations) Retry(ctx context.Context, id int64) error {
	return s.transition(ctx, "retry", id, []int16{StatusFailed}, StatusActive, func(tx pgx.Tx) error {
		now := s.now()
		_, err := tx.Exec(ctx, `WITH r AS (
				UPDATE `+tblJobs+` SET status = 0, attempts = 0, updated_at = $2
				WHERE batched_background_migration_id = $1 AND status = 2 RETURNING id)
			INSERT INTO `+tblTransitions+` (batched_background_migration_job_id, previous_status, next_status, created_at, updated_at)
			SELECT id, 2, 0, $2, $2 FROM r`, id, now)
		return translate(err)
	})
}

// Finalize implements [Migrations]; see [SQLMigrations].
func (s *SQLMigrations) Finalize(context.Context, int64) error {
	return fmt.Errorf("finalize from the web UI: %w (run the finalize command shown on the page)", ErrUnsupported)
}

// MarkFinished implements [Migrations].
func (s *SQLMigrations) MarkFinished(ctx context.Context, id int64, _ string) error {
	return s.transition(ctx, "mark finished", id,
		[]int16{StatusPaused, StatusActive, StatusFailed, StatusFinalizing}, StatusFinished, nil)
}

// Action is one row of the ferry_web_actions audit table.
type Action struct {
	ID          int64
	CreatedAt   time.Time
	Actor       string
	RemoteAddr  string
	Action      string
	Target      string // "migration 12", "retry set", "legacy CopyColumn"
	MigrationID *int64
	Error       string // empty on success
}

// actionsDDL is the audit table. GitLab's transition log needs a job id,
// which operator actions on a migration do not have, so ferry keeps its
// own table. CREATE ... IF NOT EXISTS makes Setup safe to run from every
// web server and worker at start.
const actionsDDL = `CREATE TABLE IF NOT EXISTS ferry_web_actions (
	id bigserial PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now(),
	actor text NOT NULL,
	remote_addr text NOT NULL DEFAULT '',
	action text NOT NULL,
	target text NOT NULL DEFAULT '',
	migration_id bigint,
	error text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ferry_web_actions_migration_id ON ferry_web_actions (migration_id, id)`

func recordAction(ctx context.Context, db *pgxpool.Pool, a Action) error {
	_, err := db.Exec(ctx, `INSERT INTO ferry_web_actions (created_at, actor, remote_addr, action, target, migration_id, error)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, a.CreatedAt, a.Actor, a.RemoteAddr, a.Action, a.Target, a.MigrationID, a.Error)
	if err != nil {
		return fmt.Errorf("record action: %w", err)
	}
	return nil
}

func listActions(ctx context.Context, db *pgxpool.Pool, migrationID *int64, limit int) ([]Action, error) {
	rows, err := db.Query(ctx, `SELECT id, created_at, actor, remote_addr, action, target, migration_id, error
		FROM ferry_web_actions WHERE ($1::bigint IS NULL OR migration_id = $1) ORDER BY id DESC LIMIT $2`, migrationID, limit)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []Action
	for rows.Next() {
		var a Action
		if err := rows.Scan(&a.ID, &a.CreatedAt, &a.Actor, &a.RemoteAddr, &a.Action, &a.Target, &a.MigrationID, &a.Error); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}
