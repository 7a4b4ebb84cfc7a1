package legacy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels for errors.Is. Each typed error below matches one of them.
var (
	// ErrUnknownMigration: no migration class is registered under the name.
	ErrUnknownMigration = errors.New("unknown background migration class")
	// ErrInvalidArgs: the arguments do not fit the class's Args type.
	ErrInvalidArgs = errors.New("invalid background migration arguments")
	// ErrInvalidIdentifier: a table or column name is not acceptable
	// (too long, or characters ferry refuses to put into SQL).
	ErrInvalidIdentifier = errors.New("invalid SQL identifier")
	// ErrNotFound: a table or column does not exist.
	ErrNotFound = errors.New("table or column not found")
	// ErrNoDatabase: the migration needs PostgreSQL but none is configured.
	ErrNoDatabase = errors.New("no database connection: set DATABASE_URL or --database-url")
	// ErrTrackedJobFailed: a pending tracking row was performed and
	// failed. The row's data, not the operator's command, was bad, so
	// the CLI exits 1 even when the cause is also bad input.
	ErrTrackedJobFailed = errors.New("pending tracked job failed")
)

// TrackedJobError is a pending tracking row whose perform failed.
type TrackedJobError struct {
	Job TrackedJob
	Err error
}

func (e *TrackedJobError) Error() string {
	return fmt.Sprintf("tracking row %d (%s %s): %v", e.Job.ID, e.Job.Class, e.Job.Arguments, e.Err)
}

// Unwrap gives the cause (bad arguments, missing column...).
func (e *TrackedJobError) Unwrap() error { return e.Err }

// Is matches ErrTrackedJobFailed.
func (e *TrackedJobError) Is(target error) bool { return target == ErrTrackedJobFailed }

// UnknownMigrationError names the class that is not registered.
type UnknownMigrationError struct {
	Class string
	Known []string
}

func (e *UnknownMigrationError) Error() string {
	return fmt.Sprintf("unknown background migration class %q (registered: %s)", e.Class, strings.Join(e.Known, ", "))
}

// Is matches ErrUnknownMigration.
func (e *UnknownMigrationError) Is(target error) bool { return target == ErrUnknownMigration }

// SidekiqErrorClass is what a failed job records, as Ruby's const_get would.
func (e *UnknownMigrationError) SidekiqErrorClass() string { return "NameError" }

// ArgsError means arguments did not decode into the class's Args type.
type ArgsError struct {
	Class string
	Err   error
}

func (e *ArgsError) Error() string { return fmt.Sprintf("%s: bad arguments: %v", e.Class, e.Err) }
func (e *ArgsError) Unwrap() error { return e.Err }

// Is matches ErrInvalidArgs.
func (e *ArgsError) Is(target error) bool { return target == ErrInvalidArgs }

// SidekiqErrorClass is what a failed job records.
func (e *ArgsError) SidekiqErrorClass() string { return "ArgumentError" }

// IdentifierError rejects a table or column name.
type IdentifierError struct {
	What    string // "table", "column"
	Name    string
	Reason  string
	Missing bool // it is well-formed but does not exist
}

func (e *IdentifierError) Error() string {
	return fmt.Sprintf("%s %q %s", e.What, e.Name, e.Reason)
}

// Is matches ErrNotFound for a missing object, else ErrInvalidIdentifier.
func (e *IdentifierError) Is(target error) bool {
	if e.Missing {
		return target == ErrNotFound
	}
	return target == ErrInvalidIdentifier
}

// SidekiqErrorClass is what a failed job records.
func (e *IdentifierError) SidekiqErrorClass() string { return "ArgumentError" }

// IsBadInput reports errors that no retry can fix: unknown class, bad
// arguments, hostile identifiers. The CLI exits 2 on them and the worker
// sends such a job straight to the dead set, where an operator sees it.
func IsBadInput(err error) bool {
	return errors.Is(err, ErrUnknownMigration) || errors.Is(err, ErrInvalidArgs) || errors.Is(err, ErrInvalidIdentifier)
}
