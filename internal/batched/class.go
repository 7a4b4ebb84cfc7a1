package batched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Class is a batched migration class: what to do with the rows of one
// sub-batch. Register it in a [Registry] under its GitLab name.
type Class struct {
	// Name is the job_class_name stored on the migration (no leading "::").
	Name string
	// NumArgs is how many job arguments the class takes; [Engine.Queue]
	// rejects any other count.
	NumArgs int
	// Plan validates args against the table and returns the per-sub-batch
	// work. It is called at queue time (PlanContext.Queueing, where missing
	// columns should be errors) and once at the start of every batch, with
	// the table's columns as they are then.
	Plan func(pc PlanContext) (*Plan, error)
}

// PlanContext is what [Class.Plan] gets.
type PlanContext struct {
	Target   *Target
	Args     []json.RawMessage
	Queueing bool
	// Resolve looks up another table and column (set while queueing only).
	Resolve func(table, column string) (*Target, error)
}

// Arg decodes argument i into dst.
func (pc PlanContext) Arg(i int, dst any) error {
	if i >= len(pc.Args) {
		return fmt.Errorf("%w: argument %d is missing", ErrInvalidArgs, i+1)
	}
	if err := json.Unmarshal(pc.Args[i], dst); err != nil {
		return fmt.Errorf("%w: argument %d: %v", ErrInvalidArgs, i+1, err)
	}
	return nil
}

// Plan is how one sub-batch is migrated. Exactly one of Set or Do is used
// (Set wins), unless Skip.
//
// Set (with optional Where) is the fast path: the engine runs one UPDATE
// statement per sub-batch, `UPDATE <table> AS t SET <Set> WHERE <range>
// AND (<Where>)`. Build both from [Quote]d identifiers only, never from
// raw input. The target table is aliased t.
//
// Do is the general path: it runs inside the sub-batch's transaction
// (statement_timeout already set) for rows whose batching column is in
// [lo, hi]; it returns the rows it touched. The engine commits the
// sub-batch together with its progress, so Do never sees a row twice.
type Plan struct {
	Set   string
	Where string
	Do    func(ctx context.Context, tx pgx.Tx, lo, hi int64) (int64, error)
	// Skip means there is nothing to do any more (e.g. every column to copy
	// was dropped); batches then succeed without touching the table, and
	// the engine logs SkipReason (once a minute per migration).
	Skip       bool
	SkipReason string
	// Operation names the work in job metrics (GitLab's operation_name).
	Operation string
}

// andWhere is p's Where as a condition to append to the sub-batch's range
// (" AND (<Where>)"), "" when it has none.
func (p *Plan) andWhere() string {
	if p.Where == "" {
		return ""
	}
	return " AND (" + p.Where + ")"
}

// Quote quotes one identifier for SQL.
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// Registry maps class names to classes. It is safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex
	classes map[string]Class
}

// NewRegistry returns a registry holding the built-in classes
// (see [Builtins]).
func NewRegistry() *Registry {
	r := &Registry{classes: map[string]Class{}}
	for _, c := range Builtins() {
		r.MustRegister(c)
	}
	return r
}

// ErrDuplicateClass is returned by [Registry.Register] for a name taken.
var ErrDuplicateClass = errors.New("bbm: class already registered")

// Register adds c.
func (r *Registry) Register(c Class) error {
	c.Name = strings.TrimPrefix(c.Name, "::")
	if c.Name == "" || c.Plan == nil || c.NumArgs < 0 {
		return fmt.Errorf("bbm: class needs a Name, a Plan and NumArgs >= 0")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.classes[c.Name]; dup {
		return fmt.Errorf("%w: %s", ErrDuplicateClass, c.Name)
	}
	r.classes[c.Name] = c
	return nil
}

// MustRegister is Register that panics, for init-time registration.
func (r *Registry) MustRegister(c Class) {
	if err := r.Register(c); err != nil {
		panic(err)
	}
}

// Lookup finds a class by name (a leading "::" is ignored).
func (r *Registry) Lookup(name string) (Class, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.classes[strings.TrimPrefix(name, "::")]
	return c, ok
}

// Names lists the registered classes, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.classes))
	for n := range r.classes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
