package batched_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/jobs/batched"
)

// A class that lower-cases emails: one UPDATE per sub-batch, identifiers
// quoted with batched.Quote, the column checked against the table.
func Example() {
	reg := batched.NewRegistry()
	batched.Add(reg, batched.Class{
		Name:    "LowercaseEmails",
		NumArgs: 1, // [column]
		Plan: func(pc batched.PlanContext) (*batched.Plan, error) {
			var col string
			if err := pc.Arg(0, &col); err != nil {
				return nil, err
			}
			if !pc.Target.Has(col) {
				return nil, fmt.Errorf("%w: no column %q", batched.ErrColumnNotFound, col)
			}
			c := batched.Quote(col)
			return &batched.Plan{Set: c + " = lower(" + c + ")", Where: "t." + c + " <> lower(t." + c + ")"}, nil
		},
	})
	fmt.Println(reg.Names())
	err := batched.AddSafely(reg, batched.Class{Name: "LowercaseEmails", Plan: func(batched.PlanContext) (*batched.Plan, error) { return nil, nil }})
	fmt.Println(err)
	// Output:
	// [CopyColumnUsingBackgroundMigrationJob LowercaseEmails NullifyOrphanedReferences]
	// bbm: class already registered: LowercaseEmails
}
