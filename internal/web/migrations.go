package web

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Migrations performs the operator actions on batched background
// migrations. The UI calls it and nothing else for mutations;
// [EngineMigrations], the default, runs the engine's operations, the same
// as the `ferry bbm` commands.
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
