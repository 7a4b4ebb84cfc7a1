package legacy_test

import (
	"context"
	"fmt"

	"github.com/ferrymigrate/ferry/jobs/legacy"
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
	err := legacy.AddSafely(reg, legacy.PerformFunc[ResetCounterArgs](func(context.Context, *legacy.Job[ResetCounterArgs]) error { return nil }))
	fmt.Println(err)
	fmt.Println(reg.Classes())
	// Output:
	// bm: migration class "ResetCounter" is already registered
	// [ResetCounter]
}
