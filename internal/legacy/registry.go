package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgerr"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/worker"
)

// Args are a migration class's typed arguments (the second element of the
// Sidekiq args, `[MigrationClassName, [args...]]`). Kind returns the
// migration class name as Ruby enqueues it, e.g. "CopyColumn".
//
// As in package worker, a struct is filled positionally from the JSON
// array, fields in declaration order; trailing fields tagged
// `sidekiq:",optional"` may be absent. A slice type or a json.Unmarshaler
// receives the whole array.
type Args interface {
	Kind() string
}

// DB is what a migration gets to talk to PostgreSQL: a *pgxpool.Pool, a
// *pgx.Conn or a pgx.Tx.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Job is one run of a migration.
type Job[T Args] struct {
	Args T
	// Class and RawArgs are exactly as enqueued; RawArgs is what the
	// tracking table's arguments column is compared with.
	Class   string
	RawArgs json.RawMessage
	// DB is nil when no database is configured.
	DB     DB
	Logger *zap.Logger
	// Tables resolves table and column names through pg_catalog once per
	// table rather than once per job (see [Tables]).
	Tables *Tables
}

// MarkSucceeded marks this job's tracking rows succeeded, as GitLab
// migrations do with mark_all_as_succeeded. [Runner] does it after every
// successful perform anyway unless Runner.NoAutoTrack is set.
func (j *Job[T]) MarkSucceeded(ctx context.Context) error {
	if j.DB == nil {
		return ErrNoDatabase
	}
	_, err := MarkSucceeded(ctx, j.DB, j.Class, j.RawArgs)
	return err
}

// Migration performs one class of legacy background migration. Perform
// must be idempotent: a job can run again after a crash or a retry.
type Migration[T Args] interface {
	Perform(ctx context.Context, job *Job[T]) error
}

// Validator is implemented by migrations that can check a job's
// arguments against the database before it runs (tables and columns
// exist, ranges are ordered). The worker calls it before it takes the
// class's running slot, so a job no retry can fix fails at once instead of
// waiting its turn. An error matching ErrInvalidArgs or
// ErrInvalidIdentifier sends the job to the dead set.
type Validator[T Args] interface {
	Validate(ctx context.Context, job *Job[T]) error
}

// PerformFunc adapts a function to a Migration.
type PerformFunc[T Args] func(ctx context.Context, job *Job[T]) error

// Perform calls f.
func (f PerformFunc[T]) Perform(ctx context.Context, job *Job[T]) error { return f(ctx, job) }

// BatchMigration is implemented by migrations that can perform several
// jobs at once, e.g. one statement over many id ranges. `bm steal` uses
// it for runs of jobs of the class: db is a transaction, so the jobs are
// performed all or none, and on any error the steal performs them one by
// one instead, which finds the job that fails. PerformBatch returns
// ErrNotBatchable when the jobs cannot be combined (different tables, too
// large together).
type BatchMigration[T Args] interface {
	PerformBatch(ctx context.Context, db DB, jobs []*Job[T]) error
}

// ErrNotBatchable: the jobs must be performed one by one (the steal then
// offers no more runs).
var ErrNotBatchable = sidekiq.ErrNoBatch

// Registry maps migration class names to migrations. Fill it before use;
// it is safe for concurrent reads afterwards.
type Registry struct {
	mu sync.RWMutex
	m  map[string]entry
}

type entry struct {
	prepare prepareFunc
	batch   batchFunc // nil: the migration is not a BatchMigration
}

// prepareFunc decodes and validates a job and returns its perform.
type prepareFunc func(ctx context.Context, env runEnv, class string, raw json.RawMessage) (func(context.Context) error, error)

// batchFunc decodes and validates jobs and returns their joint perform.
type batchFunc func(ctx context.Context, env runEnv, class string, raws []json.RawMessage) (func(context.Context, DB) error, error)

type runEnv struct {
	db     DB
	log    *zap.Logger
	tables *Tables
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{m: map[string]entry{}}
}

// Add registers m under T's Kind. It panics on an empty or duplicate
// name, a programming error; see AddSafely.
func Add[T Args](r *Registry, m Migration[T]) {
	if err := AddSafely(r, m); err != nil {
		panic(err)
	}
}

// AddSafely is Add returning an error instead of panicking.
func AddSafely[T Args](r *Registry, m Migration[T]) error {
	var zero T
	name := normalizeClass(zero.Kind())
	if name == "" {
		return fmt.Errorf("bm: %T.Kind() returned an empty class name", zero)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.m[name]; dup {
		return fmt.Errorf("bm: migration class %q is already registered", name)
	}
	e := entry{prepare: func(ctx context.Context, env runEnv, class string, raw json.RawMessage) (func(context.Context) error, error) {
		job, err := prepareJob(ctx, m, env, class, raw)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.Perform(ctx, job) }, nil
	}}
	if b, ok := m.(BatchMigration[T]); ok {
		e.batch = func(ctx context.Context, env runEnv, class string, raws []json.RawMessage) (func(context.Context, DB) error, error) {
			jobs := make([]*Job[T], len(raws))
			for i, raw := range raws {
				job, err := prepareJob(ctx, m, env, class, raw)
				if err != nil {
					return nil, err
				}
				jobs[i] = job
			}
			return func(ctx context.Context, db DB) error {
				for _, j := range jobs {
					j.DB = db // the transaction, for everything the run does
				}
				return b.PerformBatch(ctx, db, jobs)
			}, nil
		}
	}
	r.m[name] = e
	return nil
}

// prepareJob decodes raw and runs m's Validator, if any.
func prepareJob[T Args](ctx context.Context, m Migration[T], env runEnv, class string, raw json.RawMessage) (*Job[T], error) {
	var args T
	if err := worker.DecodeArgs(raw, &args); err != nil {
		return nil, &ArgsError{Class: class, Err: err}
	}
	job := &Job[T]{Args: args, Class: class, RawArgs: raw, DB: env.db, Logger: env.log, Tables: env.tables}
	if v, ok := m.(Validator[T]); ok {
		if err := v.Validate(ctx, job); err != nil {
			return nil, err
		}
	}
	return job, nil
}

// Has reports whether class is registered.
func (r *Registry) Has(class string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.m[normalizeClass(class)]
	return ok
}

// Classes lists the registered names, sorted.
func (r *Registry) Classes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.m))
	for k := range r.m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// normalizeArgs reads absent or null migration arguments as [].
func normalizeArgs(a json.RawMessage) json.RawMessage {
	if len(a) == 0 || string(a) == "null" {
		return json.RawMessage("[]")
	}
	return a
}

// normalizeClass drops a leading "::", which GitLab never stores.
func normalizeClass(s string) string { return strings.TrimPrefix(strings.TrimSpace(s), "::") }

// Runner performs migrations by name (GitLab's JobCoordinator#perform).
type Runner struct {
	Registry *Registry
	// DB is handed to migrations and used for the tracking table; nil
	// when no database is configured (migrations that need one fail with
	// ErrNoDatabase).
	DB     DB
	Logger *zap.Logger
	// NoAutoTrack turns off marking tracking rows succeeded after a
	// successful perform. It is on by default because a migration that
	// forgets mark_all_as_succeeded leaves rows pending forever and blocks
	// upgrades (a recurring GitLab support case).
	NoAutoTrack bool
	// Tables caches table and column lookups; nil gets one with
	// DefaultTablesTTL on first use.
	Tables *Tables
	once   sync.Once
}

// PanicError is a panic recovered from a migration.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Prepared is a job whose arguments were decoded and validated; Run
// performs it.
type Prepared struct {
	r       *Runner
	class   string
	args    json.RawMessage
	perform func(context.Context) error
}

// Prepare decodes args for class and runs the migration's [Validator], if
// any, without performing it. Errors are as Perform's.
func (r *Runner) Prepare(ctx context.Context, class string, args json.RawMessage) (p *Prepared, err error) {
	class, args = normalizeClass(class), normalizeArgs(args)
	r.Registry.mu.RLock()
	prepare := r.Registry.m[class].prepare
	r.Registry.mu.RUnlock()
	if prepare == nil {
		return nil, &UnknownMigrationError{Class: class, Known: r.Registry.Classes()}
	}
	defer recoverPanic(&err)
	perform, err := prepare(ctx, r.env(class), class, args)
	if err != nil {
		return nil, err
	}
	return &Prepared{r: r, class: class, args: args, perform: perform}, nil
}

// Run performs the job, then marks its tracking rows succeeded.
func (p *Prepared) Run(ctx context.Context) (err error) {
	defer recoverPanic(&err)
	if err := p.perform(ctx); err != nil {
		return pgerr.WithDetails(err)
	}
	if p.r.DB != nil && !p.r.NoAutoTrack {
		if _, err := MarkSucceeded(ctx, p.r.DB, p.class, p.args); err != nil && !isUndefinedTable(err) {
			return fmt.Errorf("%s: performed, but marking its tracking rows succeeded failed: %w", p.class, err)
		}
	}
	return nil
}

// Perform runs class with args (a JSON array; empty means []) inline.
func (r *Runner) Perform(ctx context.Context, class string, args json.RawMessage) error {
	p, err := r.Prepare(ctx, class, args)
	if err != nil {
		return err
	}
	return p.Run(ctx)
}

// env is what a migration of class gets from this runner.
func (r *Runner) env(class string) runEnv {
	log := r.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return runEnv{db: r.DB, log: log.With(zap.String("migration", class)), tables: r.tables()}
}

func recoverPanic(err *error) {
	if v := recover(); v != nil {
		*err = &PanicError{Value: v, Stack: string(debug.Stack())}
	}
}

// tables is the runner's name cache, made on first use.
func (r *Runner) tables() *Tables {
	r.once.Do(func() {
		if r.Tables == nil {
			r.Tables = NewTables(DefaultTablesTTL)
		}
	})
	return r.Tables
}

func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42P01"
}
