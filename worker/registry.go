package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Args are a job's typed arguments. Kind returns the Sidekiq class name,
// the stable key under which the worker is registered and by which Ruby
// enqueues it (e.g. "BackgroundMigrationWorker").
//
// Sidekiq args are a positional JSON array. A struct's exported fields are
// filled from the array in declaration order (see [DecodeArgs]); a type
// that implements json.Unmarshaler receives the whole array instead.
type Args interface {
	Kind() string
}

// Job is one job being worked, with its decoded args.
type Job[T Args] struct {
	Args T
	// JID, Queue and RetryCount come from the payload.
	JID        string
	Queue      string
	RetryCount int
	// EnqueuedAt is when the job was last pushed to its queue.
	EnqueuedAt time.Time
	// Payload is the whole Sidekiq payload, unknown keys included.
	Payload *sidekiq.Job
}

// Worker works jobs of one kind.
type Worker[T Args] interface {
	Work(ctx context.Context, job *Job[T]) error
}

// WorkFunc adapts a function to a Worker.
type WorkFunc[T Args] func(ctx context.Context, job *Job[T]) error

// Work calls f.
func (f WorkFunc[T]) Work(ctx context.Context, job *Job[T]) error { return f(ctx, job) }

// Registry maps Sidekiq class names to workers. Build it before starting a
// [Runtime]; it is safe for concurrent reads afterwards.
type Registry struct {
	mu      sync.RWMutex
	entries map[string]*entry
}

type entry struct {
	kind string
	run  func(ctx context.Context, payload *sidekiq.Job) error
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{entries: map[string]*entry{}} }

// AddWorker registers w under T's Kind. It panics on a duplicate or empty
// kind, which is a programming error; see AddWorkerSafely.
func AddWorker[T Args](r *Registry, w Worker[T]) {
	if err := AddWorkerSafely(r, w); err != nil {
		panic(err)
	}
}

// AddWorkerSafely is AddWorker returning an error instead of panicking.
func AddWorkerSafely[T Args](r *Registry, w Worker[T]) error {
	var zero T
	kind := zero.Kind()
	if kind == "" {
		return fmt.Errorf("worker: %T.Kind() returned an empty class name", zero)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.entries[kind]; dup {
		return fmt.Errorf("worker: class %q is already registered", kind)
	}
	r.entries[kind] = &entry{kind: kind, run: func(ctx context.Context, p *sidekiq.Job) error {
		var args T
		if err := decodeArgs(nil, p, &args); err != nil {
			_, fatal := any(args).(FatalArgs)
			return &ArgsError{Class: kind, Err: err, Fatal: fatal}
		}
		j := &Job[T]{Args: args, JID: p.JID(), Queue: p.Queue(), Payload: p}
		if n, ok := p.Int("retry_count"); ok {
			j.RetryCount = int(n)
		}
		if at, ok := p.Time("enqueued_at"); ok { // 8.x ms or 6.4/7.x seconds
			j.EnqueuedAt = at
		}
		return w.Work(ctx, j)
	}}
	return nil
}

// Kinds lists the registered class names.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.entries))
	for k := range r.entries {
		out = append(out, k)
	}
	return out
}

// Has reports whether class is registered.
func (r *Registry) Has(class string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.entries[class]
	return ok
}

func (r *Registry) lookup(class string) *entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.entries[class]
}

// Perform runs one payload inline with the registered worker, outside the
// fetch loop (used by tools such as `ferry bm steal`). Unknown classes
// return an *UnknownClassError.
func (r *Registry) Perform(ctx context.Context, p *sidekiq.Job) error {
	e := r.lookup(p.Class())
	if e == nil {
		return &UnknownClassError{Class: p.Class()}
	}
	return e.run(ctx, p)
}

// EncodeArgs turns typed args into the positional JSON array Sidekiq uses:
// a struct becomes its exported fields in order.
func EncodeArgs(args any) (json.RawMessage, error) {
	return encodeArgs(args)
}
