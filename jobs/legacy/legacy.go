package legacy

import engine "github.com/ferrymigrate/ferry/internal/legacy"

// Args are a migration class's typed arguments; Kind returns the class name
// as Ruby enqueues it, e.g. "CopyColumn".
type Args = engine.Args

// Job is one run of a migration: typed Args, the class and raw args as
// enqueued, a database handle, a logger and a catalog cache.
type Job[T Args] = engine.Job[T]

// DB is what a migration gets to talk to PostgreSQL.
type DB = engine.DB

// Migration performs one class of legacy background migration. Perform
// must be idempotent: a job can run again after a crash or a retry.
type Migration[T Args] = engine.Migration[T]

// Validator is implemented by migrations that check a job's arguments
// against the database before it takes its running slot.
type Validator[T Args] = engine.Validator[T]

// BatchMigration is implemented by migrations that can perform several
// jobs at once (one statement over many id ranges); `ferry bm steal`
// offers it runs of jobs, inside one transaction, and redoes a failed run
// job by job. Return ErrNotBatchable for jobs that cannot be combined.
type BatchMigration[T Args] = engine.BatchMigration[T]

// ErrNotBatchable: the jobs offered to PerformBatch must run one by one.
var ErrNotBatchable = engine.ErrNotBatchable

// PerformFunc adapts a function to a Migration.
type PerformFunc[T Args] = engine.PerformFunc[T]

// Registry maps migration class names to migrations.
type Registry = engine.Registry

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return engine.NewRegistry() }

// Add registers m under its Args' Kind and panics if the name is taken:
// for a main that registers its classes once at start.
func Add[T Args](r *Registry, m Migration[T]) { engine.Add(r, m) }

// AddSafely registers m, or returns an error if the name is taken.
func AddSafely[T Args](r *Registry, m Migration[T]) error { return engine.AddSafely(r, m) }

// Errors a migration returns (wrap them with %w): the job then goes to the
// dead set with the reason instead of being retried.
var (
	ErrInvalidArgs       = engine.ErrInvalidArgs
	ErrInvalidIdentifier = engine.ErrInvalidIdentifier
	ErrNotFound          = engine.ErrNotFound
)
