package batched

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/ferrymigrate/ferry/worker"
)

// Args are a batched class's typed job arguments, as for Sidekiq job
// classes (package worker) and legacy migrations: a struct filled
// positionally from the job_arguments array, fields in declaration order.
// Kind returns the class name (GitLab's job_class_name).
type Args interface {
	Kind() string
}

// Planner plans a class's sub-batches from its typed arguments.
type Planner[T Args] interface {
	Plan(pc PlanContext, args T) (*Plan, error)
}

// PlanFunc adapts a function to a Planner.
type PlanFunc[T Args] func(pc PlanContext, args T) (*Plan, error)

// Plan calls f.
func (f PlanFunc[T]) Plan(pc PlanContext, args T) (*Plan, error) { return f(pc, args) }

// ClassOf is the Class of a typed planner: named by T's Kind, taking as
// many arguments as T has exported fields, each decoded into its field (a
// wrong type is ErrInvalidArgs, at queue time already).
func ClassOf[T Args](p Planner[T]) (Class, error) {
	var zero T
	t := reflect.TypeOf(zero)
	if t == nil || t.Kind() != reflect.Struct {
		return Class{}, fmt.Errorf("bbm: typed arguments of a batched class must be a struct, got %T", zero)
	}
	n := 0
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("sidekiq")
		switch {
		case !f.IsExported() || tag == "-":
		case strings.Contains(tag, "optional"):
			// The engine checks an exact count at queue time.
			return Class{}, fmt.Errorf("bbm: %T.%s: optional arguments are not supported in batched classes; use AddClass", zero, f.Name)
		default:
			n++
		}
	}
	return Class{Name: zero.Kind(), NumArgs: n, Plan: func(pc PlanContext) (*Plan, error) {
		raw, err := json.Marshal(pc.Args)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgs, err)
		}
		var args T
		if err := worker.DecodeArgs(raw, &args); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgs, err)
		}
		return p.Plan(pc, args)
	}}, nil
}

// AddTyped registers the class of a typed planner (see ClassOf).
func AddTyped[T Args](r *Registry, p Planner[T]) error {
	c, err := ClassOf(p)
	if err != nil {
		return err
	}
	return r.Register(c)
}
