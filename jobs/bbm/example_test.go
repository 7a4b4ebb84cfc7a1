package bbm_test

import (
	"fmt"

	"github.com/ferrymigrate/ferry/jobs/bbm"
)

// A class that lower-cases emails: one UPDATE per sub-batch, identifiers
// quoted with bbm.Quote, the column checked against the table.
func Example() {
	reg := bbm.NewRegistry()
	reg.MustRegister(bbm.Class{
		Name:    "LowercaseEmails",
		NumArgs: 1, // [column]
		Plan: func(pc bbm.PlanContext) (*bbm.Plan, error) {
			var col string
			if err := pc.Arg(0, &col); err != nil {
				return nil, err
			}
			if !pc.Target.Has(col) {
				return nil, fmt.Errorf("%w: no column %q", bbm.ErrColumnNotFound, col)
			}
			c := bbm.Quote(col)
			return &bbm.Plan{Set: c + " = lower(" + c + ")", Where: "t." + c + " <> lower(t." + c + ")"}, nil
		},
	})
	fmt.Println(reg.Names())
	// Output: [CopyColumnUsingBackgroundMigrationJob LowercaseEmails NullifyOrphanedReferences]
}
