package batched_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/jobs/batched"
)

// LowercaseArgs are the job arguments of LowercaseEmails: ["email"].
type LowercaseArgs struct {
	Column string
}

func (LowercaseArgs) Kind() string { return "LowercaseEmails" }

// A class that lower-cases a column: one UPDATE per sub-batch, identifiers
// quoted with batched.Quote, the column checked against the table.
func Example() {
	reg := batched.NewRegistry()
	batched.Add(reg, batched.PlanFunc[LowercaseArgs](func(pc batched.PlanContext, a LowercaseArgs) (*batched.Plan, error) {
		if !pc.Target.Has(a.Column) {
			return nil, fmt.Errorf("%w: no column %q", batched.ErrColumnNotFound, a.Column)
		}
		c := batched.Quote(a.Column)
		return &batched.Plan{Set: c + " = lower(" + c + ")", Where: "t." + c + " <> lower(t." + c + ")"}, nil
	}))
	fmt.Println(reg.Names())
	err := batched.AddSafely(reg, batched.PlanFunc[LowercaseArgs](func(batched.PlanContext, LowercaseArgs) (*batched.Plan, error) { return nil, nil }))
	fmt.Println(err)
	// Output:
	// [CopyColumnUsingBackgroundMigrationJob LowercaseEmails NullifyOrphanedReferences]
	// bbm: class already registered: LowercaseEmails
}

// A class that decodes its arguments itself, for argument shapes a struct
// cannot describe.
func ExampleAddClass() {
	reg := batched.NewRegistry()
	err := batched.AddClass(reg, batched.Class{
		Name:    "TouchRows",
		NumArgs: 0,
		Plan: func(pc batched.PlanContext) (*batched.Plan, error) {
			return &batched.Plan{Set: "updated_at = now()"}, nil
		},
	})
	fmt.Println(err, reg.Names())
	// Output: <nil> [CopyColumnUsingBackgroundMigrationJob NullifyOrphanedReferences TouchRows]
}
