package legacy_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrymigrate/ferry/internal/legacy"
)

// ResetCounterArgs are the arguments of a migration class as Ruby enqueues
// it: BackgroundMigrationWorker.perform_async('ResetCounter', ['users', 7]).
type ResetCounterArgs struct {
	Table string
	ID    int64
}

func (ResetCounterArgs) Kind() string { return "ResetCounter" }

func Example() {
	reg := legacy.NewRegistry()
	legacy.Add(reg, legacy.PerformFunc[ResetCounterArgs](func(ctx context.Context, job *legacy.Job[ResetCounterArgs]) error {
		fmt.Printf("resetting %s #%d\n", job.Args.Table, job.Args.ID)
		return nil
	}))
	legacy.AddCopyColumn(reg, legacy.CopyColumn{})

	// A Runner performs classes by name; without a database it skips the
	// tracking table.
	runner := &legacy.Runner{Registry: reg}
	ctx := context.Background()
	if err := runner.Perform(ctx, "ResetCounter", []byte(`["users", 7]`)); err != nil {
		fmt.Println(err)
	}
	err := runner.Perform(ctx, "ResetCounter", []byte(`["users"]`))
	fmt.Println(err, errors.Is(err, legacy.ErrInvalidArgs))
	err = runner.Perform(ctx, "NoSuchMigration", nil)
	fmt.Println(errors.Is(err, legacy.ErrUnknownMigration))
	fmt.Println(reg.Classes())
	// Output:
	// resetting users #7
	// ResetCounter: bad arguments: expected 2 arguments, got 1 true
	// true
	// [CopyColumn ResetCounter]
}
