package batched_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// "events" and "public.events" are one table: the one-migration-per-table
// rule (the scheduler's picks, Executable, claim and the waiting reason)
// holds however a configuration spells it.
func TestOneMigrationPerTableHoweverSpelled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	e := b.engine(t, batched.Config{})
	b.table(t, "spelled", 2000)
	b.table(t, "other_table", 2000)
	queue := func(table, column string) int64 {
		t.Helper()
		res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: table, Column: column})
		if err != nil {
			t.Fatal(err)
		}
		if res.Existing {
			t.Fatalf("%s.%s: queued as a duplicate of %d", table, column, res.Migration.ID)
		}
		return res.Migration.ID
	}
	first := queue("spelled", "id")
	second := queue("public.spelled", "v")
	control := queue("other_table", "id")

	ids, err := e.Executable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ids, first) || slices.Contains(ids, second) || !slices.Contains(ids, control) {
		t.Fatalf("Executable = %v; want %d and %d, not %d (same table as %d)", ids, first, control, second, first)
	}
	// max-running is 2: the scheduler's two picks are the first and the
	// control one, not the second behind the first.
	if picks, err := batched.SchedulerPicks(ctx, e); err != nil || !slices.Equal(picks, []int64{first, control}) {
		t.Fatalf("scheduler picks %v, %v; want [%d %d]", picks, err, first, control)
	}

	// A batch of the first runs (a claimed job row): claim refuses the
	// second and still gives the control one a batch.
	if _, err := b.pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at)
		VALUES ($1, 3, 30, 10, 10, 1, now())`, first); err != nil {
		t.Fatal(err)
	}
	if out, err := e.RunBatch(ctx, second); err != nil || out != batched.NoCapacity {
		t.Fatalf("RunBatch(second) = %v, %v; want %v: its table has a running batch", out, err, batched.NoCapacity)
	}
	if out, err := e.RunBatch(ctx, control); err != nil || out != batched.Ran {
		t.Fatalf("RunBatch(control) = %v, %v; want %v", out, err, batched.Ran)
	}

	// RunBatch started the engine's session: a worker is alive.
	v, err := e.Get(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	p := v.Progress
	if p.State != batched.StateWaiting || !strings.Contains(p.Reason, "on the same table") {
		t.Fatalf("second: %s: %q; want waiting for the first on the same table", p.State, p.Reason)
	}

	// Whatever a row names (GitLab's code or a hand-written INSERT wrote
	// it), resolving it never fails the scheduler, Executable or the read
	// model; two rows naming the same missing table are one table.
	odd := []string{"", "a.b.c", ".x", "x.", `x"y`, "two words.t", strings.Repeat("n", 100), "nosuch.t", "nosuch.t"}
	for _, name := range odd {
		if _, err := b.pool.Exec(ctx, `INSERT INTO batched_background_migrations
			(job_class_name, table_name, column_name, batch_size, sub_batch_size, status, max_value) VALUES ('CountAndCopy', $1, 'id', 10, 10, 1, 100)`, name); err != nil {
			t.Fatal(err)
		}
	}
	ids, err = e.Executable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 + len(odd) - 1; len(ids) != want {
		t.Errorf("Executable with odd names = %v; want %d ids (all but the second and the repeated nosuch.t)", ids, want)
	}
	if _, err := batched.SchedulerPicks(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, err := e.List(ctx); err != nil {
		t.Fatal(err)
	}
}
