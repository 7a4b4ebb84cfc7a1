package batched

import engine "github.com/ferrymigrate/ferry/internal/batched"

// Class is a batched migration class: its name, how many job arguments it
// takes, and its Plan.
type Class = engine.Class

// PlanContext is what a class's Plan gets: the target table as it is now
// and the job arguments (decode them with its Arg method).
type PlanContext = engine.PlanContext

// Plan is how one sub-batch is migrated: an SQL SET (and WHERE) for the
// engine's one-statement fast path, or a Do function.
type Plan = engine.Plan

// Target is the migration's table, resolved through pg_catalog: its schema,
// name and columns (Ident, Has).
type Target = engine.Target

// Registry maps class names to classes; safe for concurrent use.
type Registry = engine.Registry

// Args are a class's typed job arguments: a struct filled positionally
// from the job_arguments JSON array, fields in declaration order (as
// worker.Job and legacy.Job args are). Kind returns the class name.
type Args = engine.Args

// Planner plans a class's sub-batches from its typed arguments.
type Planner[T Args] = engine.Planner[T]

// PlanFunc adapts a function to a Planner.
type PlanFunc[T Args] = engine.PlanFunc[T]

// NewRegistry returns a registry holding ferry's built-in classes.
func NewRegistry() *Registry { return engine.NewRegistry() }

// Add registers the class of p under its Args' Kind and panics if the
// name is taken: for a main that registers its classes once at start (the
// same verb as legacy.Add and worker.AddWorker).
func Add[T Args](r *Registry, p Planner[T]) {
	if err := engine.AddTyped(r, p); err != nil {
		panic(err)
	}
}

// AddSafely is Add returning an error (wrapping ErrDuplicateClass for a
// name taken) instead of panicking.
func AddSafely[T Args](r *Registry, p Planner[T]) error { return engine.AddTyped(r, p) }

// AddClass registers an untyped class, whose Plan decodes the raw
// arguments itself (PlanContext.Arg).
func AddClass(r *Registry, c Class) error { return r.Register(c) }

// Quote quotes one SQL identifier. Build a Plan's Set and Where from quoted
// identifiers only, never from raw input.
func Quote(name string) string { return engine.Quote(name) }

// Errors a class returns from Plan (wrap them with %w) so that operators
// see a failed job with a clear reason and no retry is wasted.
var (
	ErrInvalidArgs    = engine.ErrInvalidArgs
	ErrColumnNotFound = engine.ErrColumnNotFound
	ErrTableNotFound  = engine.ErrTableNotFound
	ErrDuplicateClass = engine.ErrDuplicateClass
)
