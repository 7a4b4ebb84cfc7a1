package batched_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/ferrymigrate/ferry/internal/batched"
)

type renameArgs struct {
	From  string
	To    string
	Limit int64
}

func (renameArgs) Kind() string { return "RenameThings" }

type notAStruct []string

func (notAStruct) Kind() string { return "Bad" }

func TestTypedClassDecodesArgsPositionally(t *testing.T) {
	var got renameArgs
	cls, err := batched.ClassOf(batched.PlanFunc[renameArgs](func(_ batched.PlanContext, a renameArgs) (*batched.Plan, error) {
		got = a
		return &batched.Plan{Skip: true}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cls.Name != "RenameThings" || cls.NumArgs != 3 {
		t.Fatalf("ClassOf = %q with %d args, want RenameThings with 3", cls.Name, cls.NumArgs)
	}
	args := []json.RawMessage{json.RawMessage(`"a"`), json.RawMessage(`"b"`), json.RawMessage(`9007199254740993`)}
	if _, err := cls.Plan(batched.PlanContext{Args: args}); err != nil {
		t.Fatal(err)
	}
	if got != (renameArgs{From: "a", To: "b", Limit: 9007199254740993}) {
		t.Fatalf("decoded %+v", got)
	}
	bad := []json.RawMessage{json.RawMessage(`1`), json.RawMessage(`"b"`), json.RawMessage(`3`)}
	if _, err := cls.Plan(batched.PlanContext{Args: bad}); !errors.Is(err, batched.ErrInvalidArgs) {
		t.Fatalf("Plan with a number for a string = %v, want ErrInvalidArgs", err)
	}
	if _, err := batched.ClassOf(batched.PlanFunc[notAStruct](func(batched.PlanContext, notAStruct) (*batched.Plan, error) { return nil, nil })); err == nil {
		t.Fatal("ClassOf(slice args) succeeded, want an error")
	}
	reg := batched.NewRegistry()
	p := batched.PlanFunc[renameArgs](func(batched.PlanContext, renameArgs) (*batched.Plan, error) { return nil, nil })
	if err := batched.AddTyped(reg, p); err != nil {
		t.Fatal(err)
	}
	if err := batched.AddTyped(reg, p); !errors.Is(err, batched.ErrDuplicateClass) {
		t.Fatalf("second AddTyped = %v, want ErrDuplicateClass", err)
	}
}

type skippedArgs struct {
	Column string
	Note   string `sidekiq:"-"`
}

func (skippedArgs) Kind() string { return "Skipped" }

type optionalArgs struct {
	Column string
	Limit  int `sidekiq:",optional"`
}

func (optionalArgs) Kind() string { return "Optional" }

// Fields the decoder skips are not counted; optional ones are refused
// (the engine checks an exact count when a migration is queued).
func TestTypedClassFieldRules(t *testing.T) {
	cls, err := batched.ClassOf(batched.PlanFunc[skippedArgs](func(_ batched.PlanContext, a skippedArgs) (*batched.Plan, error) {
		return &batched.Plan{Skip: true}, nil
	}))
	if err != nil || cls.NumArgs != 1 {
		t.Fatalf("ClassOf(skippedArgs) = %d args, %v; want 1", cls.NumArgs, err)
	}
	if _, err := cls.Plan(batched.PlanContext{Args: []json.RawMessage{json.RawMessage(`"v"`)}}); err != nil {
		t.Fatalf("Plan with the one argument: %v", err)
	}
	if _, err := batched.ClassOf(batched.PlanFunc[optionalArgs](func(batched.PlanContext, optionalArgs) (*batched.Plan, error) { return nil, nil })); err == nil {
		t.Fatal("ClassOf(optional field) succeeded, want an error")
	}
}

// ".events" names an empty schema: refused before any lookup, as "a." and
// "a.b.c" are.
func TestTargetNameShapes(t *testing.T) {
	for _, name := range []string{".events", "events.", "a.b.c", ""} {
		if _, err := batched.ResolveTarget(t.Context(), nil, name, "id"); !errors.Is(err, batched.ErrInvalidIdent) {
			t.Errorf("ResolveTarget(%q) = %v, want ErrInvalidIdent", name, err)
		}
	}
}

// A state error names the migration as the commands take it (ci_3) when
// its engine's database is named, else by its bare id.
func TestStateErrorNamesTheRef(t *testing.T) {
	for ref, want := range map[string]string{"ci_3": "migration ci_3 is active; cannot resume", "": "migration 3 is active; cannot resume"} {
		err := &batched.StateError{ID: 3, Ref: ref, Status: batched.Active, Op: "resume"}
		if err.Error() != want || !errors.Is(err, batched.ErrInvalidState) {
			t.Errorf("Ref %q: %q", ref, err.Error())
		}
	}
}
