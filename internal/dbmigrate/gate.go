package dbmigrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrymigrate/ferry/internal/batched"
)

// BBM identifies a batched background migration by GitLab's configuration.
type BBM struct {
	Class  string          `json:"job_class_name"`
	Table  string          `json:"table_name"`
	Column string          `json:"column_name"`
	Args   json.RawMessage `json:"job_arguments"`
}

// String is b as GitLab prints a configuration: CLASS,TABLE,COLUMN,ARGS.
func (b BBM) String() string { return b.Class + "," + b.Table + "," + b.Column + "," + string(b.Args) }

// FinalizeCommand is the ferry command that finishes b, quoted for sh.
func (b BBM) FinalizeCommand() string { return b.FinalizeCommandIn("") }

// FinalizeCommandIn is FinalizeCommand for the named database ("": the
// only one, no --db; --db is what `ferry bbm` prints too).
func (b BBM) FinalizeCommandIn(db string) string {
	cmd := batched.FinalizeCommand(b.Class, b.Table, b.Column, b.Args)
	if db == "" {
		return cmd
	}
	const verb = "ferry bbm finalize "
	return verb + "--db " + batched.ShellQuote(db) + " " + strings.TrimPrefix(cmd, verb)
}

// BBMGate is what migrations need from the batched migration engine.
// Status names are GitLab's: paused, active, finished, failed, finalizing,
// finalized.
type BBMGate interface {
	// Status reports the migration's status; found is false when no
	// migration has this configuration.
	Status(ctx context.Context, b BBM) (status string, found bool, err error)
	// Queue enqueues b (a no-op if it exists), recording version as
	// queued_migration_version.
	Queue(ctx context.Context, b BBM, version Version) error
	// Finalize runs the rest of b synchronously.
	Finalize(ctx context.Context, b BBM) error
}

// GateError is GitLab's upgrade-blocking error for an unfinished required
// migration; its text starts with the exact GitLab sentence.
type GateError struct {
	BBM BBM
	// Status is the migration's status name.
	Status string
	// RequiredBy is the schema migration that required it.
	RequiredBy string
	// WayOut, when set, replaces the finalize advice: the gate knows
	// finalize cannot work (see [WayOuter]).
	WayOut string
	// FinalizeErr is why `migrate --finalize` could not finish it.
	FinalizeErr error
	// Database names the database when several are configured (the
	// finalize command then selects it).
	Database string
}

// Unqueuer is an optional part of a [BBMGate]: reverting the schema
// migration version that queued b deletes b (GitLab's down), and reports
// whether there was one to delete.
type Unqueuer interface {
	Unqueue(ctx context.Context, b BBM, version Version) (bool, error)
}

// WayOuter is an optional part of a [BBMGate]: the way out of an
// unfinished migration when finalize is not one ("" when it is), e.g.
// because this binary lacks its class.
type WayOuter interface {
	WayOut(ctx context.Context, b BBM) string
}

func (e *GateError) Error() string {
	head := batched.UnfinishedHead(e.Status, e.BBM)
	if e.FinalizeErr != nil {
		head += fmt.Sprintf("--finalize could not finish it: %v\n\n", e.FinalizeErr)
	}
	if e.WayOut != "" {
		return head + e.WayOut + fmt.Sprintf("\n\n(Required by migration %s.)", e.RequiredBy)
	}
	inline := Command(e.Database, "migrate", "--finalize")
	tail := fmt.Sprintf("or let the migration finalize it inline with `%s`.", inline)
	if e.FinalizeErr != nil {
		// Both ways run its failed batches again: useful once their cause is fixed.
		tail = fmt.Sprintf("once what failed its batches is fixed, or run `%s` again then.", inline)
	}
	return head + batched.FinalizeAdvice(e.BBM.FinalizeCommandIn(e.Database)) + "\n\n" + tail +
		fmt.Sprintf(" (Required by migration %s.)", e.RequiredBy)
}
func (e *GateError) Is(target error) bool { return target == ErrGate }

func statusDone(s string) bool { return s == "finished" || s == "finalized" }

// TableGate checks gates on a database without an engine: it looks the
// configuration up as finalize does ([batched.FindConfig]: the table by any
// spelling), but cannot queue or finalize (those return [ErrNoBBMEngine]).
// Use it when no engine is available, e.g. to check an upgrade's readiness.
type TableGate struct {
	DB batched.Queryer
}

// Status implements [BBMGate].
func (g TableGate) Status(ctx context.Context, b BBM) (string, bool, error) {
	m, err := batched.FindConfig(ctx, g.DB, b.Class, b.Table, b.Column, b.Args)
	if errors.Is(err, batched.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("batched migration status: %w", err)
	}
	return m.Status.String(), true, nil
}

// Queue implements [BBMGate]; it always fails.
func (TableGate) Queue(context.Context, BBM, Version) error { return ErrNoBBMEngine }

// Finalize implements [BBMGate]; it always fails.
func (TableGate) Finalize(context.Context, BBM) error { return ErrNoBBMEngine }
