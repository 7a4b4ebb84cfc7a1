package dbmigrate

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinels; every error this package returns wraps one of them (or a
// pgx/driver error). Match with errors.Is.
var (
	// ErrNeedsSession: the connection is not a real session (its
	// statements run on changing server connections, as behind PgBouncer
	// in transaction mode), so the migrator's lock cannot hold.
	ErrNeedsSession = errors.New("ferry db needs a real PostgreSQL session, and DATABASE_URL goes through a transaction pooler " +
		"(PgBouncer): set DATABASE_DIRECT_URL to a direct connection")
	// ErrBadVersion: a version argument is not digits.
	ErrBadVersion = errors.New("bad migration version")
	// ErrBadSource: the migrations directory has a malformed file.
	ErrBadSource = errors.New("bad migration source")
	// ErrUnknownVersion: a target names no migration file nor applied version.
	ErrUnknownVersion = errors.New("unknown migration version")
	// ErrMissingDown: downto would need a down file that does not exist.
	ErrMissingDown = errors.New("missing down migration")
	// ErrLocked matches [LockedError].
	ErrLocked = errors.New("another migrator holds the migration lock")
	// ErrDirty matches [DirtyError].
	ErrDirty = errors.New("database is dirty")
	// ErrNotDirty: repair was called but nothing is dirty.
	ErrNotDirty = errors.New("database is not dirty")
	// ErrMigrationFailed matches [MigrationError].
	ErrMigrationFailed = errors.New("migration failed")
	// ErrGate matches [GateError].
	ErrGate = errors.New("batched background migration not finished")
	// ErrNoBBMEngine: a directive needs a batched migration engine that was not configured.
	ErrNoBBMEngine = errors.New("no batched background migration engine configured")
	// ErrOtherDatabase: a restore targets a database other than the one backed up.
	ErrOtherDatabase = errors.New("backup belongs to another database")
	// ErrNotConfirmed: a destructive operation was not confirmed.
	ErrNotConfirmed = errors.New("not confirmed")
	// ErrBadBackup: a restore FILE is not a pg_dump custom-format archive,
	// or a backup FILE cannot be written where asked.
	ErrBadBackup = errors.New("bad backup file")
	// ErrTool: pg_dump / pg_restore failed or is missing.
	ErrTool = errors.New("pg tool failed")
)

// Holder describes the session holding the migration lock.
type Holder struct {
	PID             int       `json:"pid"`
	ApplicationName string    `json:"application_name"`
	ClientAddr      string    `json:"client_addr"`
	ClientHostname  string    `json:"client_hostname"`
	Usename         string    `json:"usename"`
	BackendStart    time.Time `json:"backend_start"`
	State           string    `json:"state"`
	Query           string    `json:"query"`
}

func (h *Holder) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "backend pid %d", h.PID)
	if h.ApplicationName != "" {
		fmt.Fprintf(&b, ", application_name %q", h.ApplicationName)
	}
	if h.Usename != "" {
		fmt.Fprintf(&b, ", user %s", h.Usename)
	}
	if h.ClientHostname != "" || h.ClientAddr != "" {
		fmt.Fprintf(&b, ", client %s", strings.TrimSpace(h.ClientHostname+" "+h.ClientAddr))
	}
	if !h.BackendStart.IsZero() {
		fmt.Fprintf(&b, ", connected since %s", h.BackendStart.UTC().Format(time.RFC3339))
	}
	if h.State != "" {
		fmt.Fprintf(&b, ", state %s", h.State)
	}
	return b.String()
}

// LockedError: another migrator runs. Holder is nil when it let go
// between our attempt and the lookup.
type LockedError struct {
	Holder *Holder
	Waited time.Duration
}

func (e *LockedError) Error() string {
	msg := "another ferry db migrator is running"
	if e.Waited > 0 {
		msg += fmt.Sprintf(" (waited %s)", e.Waited)
	}
	if e.Holder != nil {
		msg += ": " + e.Holder.String()
	}
	return msg + "; wait for it to finish or use --lock-timeout to wait"
}
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// DirtyError: a migration failed outside a transaction (or its migrator
// died) and the database may be half-migrated.
type DirtyError struct {
	Attempt  Attempt
	Previous Version // the downto target that undoes it
	// MissingDown is the down file downto would run, when it does not
	// exist (downto then refuses until it is written); "" when it does,
	// or when no migration files were read.
	MissingDown string
	// MissingUp is its up file, when migration files were read and it is
	// not among them (an older release's folder, a deleted file): downto
	// cannot run it until the files are back.
	MissingUp string
	// Database is Options.Database: the commands given select it.
	Database string
}

func (e *DirtyError) Error() string {
	a := e.Attempt
	var what string
	if a.Died {
		what = fmt.Sprintf("migration %s_%s (%s) was started at %s by %s, but the migrator died at an unknown point (its lock is gone and no finish was recorded)",
			a.Version, a.Name, a.Direction, fmtTime(a.StartedAt), a.who())
	} else {
		what = fmt.Sprintf("migration %s_%s (%s) failed at %s with: %s", a.Version, a.Name, a.Direction, fmtTime(deref(a.FinishedAt)), a.Error)
	}
	down := "runs its down file, which must tolerate a partial state"
	switch {
	case e.MissingUp != "":
		down = "put its files back first: " + e.MissingUp + " is not in the migrations directory (an older release's?), " +
			"and downto needs it and its down file, which must tolerate a partial state"
	case e.MissingDown != "":
		down = "write its down file first: " + e.MissingDown + " does not exist; it must tolerate a partial state"
	}
	return fmt.Sprintf("database is dirty: %s\nIt ran outside a transaction, so it may be partly applied.\n"+
		"Either fix the database by hand and run `%s` (then `%s` if you completed it by hand),\n"+
		"or undo it with `%s` (%s).",
		what, Command(e.Database, "repair"), Command(e.Database, "mark-complete", string(a.Version)), Command(e.Database, "downto", string(e.Previous)), down)
}
func (e *DirtyError) Is(target error) bool { return target == ErrDirty }

// MigrationError: one migration failed. When Dirty is false it ran in a
// transaction that was rolled back, and re-running is safe.
type MigrationError struct {
	Version   Version
	Name      string
	Direction string
	Dirty     bool
	Err       error
	// InvalidIndexes are indexes the migration's file names that
	// PostgreSQL holds as INVALID: a failed CREATE INDEX CONCURRENTLY
	// leaves its index so. They must be dropped, never recorded as done.
	InvalidIndexes []string
	// Database is Options.Database: the commands given select it.
	Database string
}

func (e *MigrationError) Error() string {
	how := "it ran in a transaction and was rolled back; fix it and run again"
	if e.Dirty {
		how = fmt.Sprintf("it ran outside a transaction, so the database is now dirty (see `%s`)", Command(e.Database, "status"))
	}
	switch {
	case len(e.InvalidIndexes) > 0:
		how += "\n" + invalidAdvice(e.InvalidIndexes, e.Dirty, e.Database)
	case e.Direction == "up" && duplicateObject(e.Err):
		// The documented way out: the schema change is there already.
		how += fmt.Sprintf(". If it exists because this migration was applied already (by hand, or kept by a restore), "+
			"record it without running it: `%s`", Command(e.Database, "mark-complete", string(e.Version)))
		if e.Dirty {
			how = fmt.Sprintf("it ran outside a transaction, so the database is now dirty. If the object exists because this migration "+
				"was applied already, record it: `%s` then `%s` (see `%s`)", Command(e.Database, "repair"),
				Command(e.Database, "mark-complete", string(e.Version)), Command(e.Database, "status"))
		}
	}
	return fmt.Sprintf("migration %s_%s (%s) failed with: %v\n%s", e.Version, e.Name, e.Direction, e.Err, how)
}
func (e *MigrationError) Unwrap() error { return e.Err }

// invalidAdvice says how to get rid of INVALID indexes before running the
// migration again; recording it complete would keep them (a unique index
// that enforces nothing).
func invalidAdvice(names []string, dirty bool, db string) string {
	drops := make([]string, len(names))
	for i, n := range names {
		drops[i] = "DROP INDEX CONCURRENTLY " + n + ";"
	}
	then := "`" + Command(db, "migrate") + "`"
	if dirty {
		then = "`" + Command(db, "repair") + "` and `" + Command(db, "migrate") + "`"
	}
	return fmt.Sprintf("PostgreSQL holds index %s as INVALID (left by a failed CREATE INDEX CONCURRENTLY; it is not used and enforces nothing). "+
		"Fix what made it fail, drop it (`%s`), then run %s again; do not mark the migration complete.",
		strings.Join(names, ", "), strings.Join(drops, " "), then)
}
func (e *MigrationError) Is(target error) bool { return target == ErrMigrationFailed }

// Command is the `ferry db` command line for verb and its arguments on
// database db: with --db when several databases are configured (db is
// Options.Database), where the command without it is refused.
func Command(db, verb string, args ...string) string {
	parts := append([]string{"ferry db", verb}, args...)
	if db != "" {
		parts = append(parts, "--db", db)
	}
	return strings.Join(parts, " ")
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "an unknown time"
	}
	return t.UTC().Format(time.RFC3339)
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
