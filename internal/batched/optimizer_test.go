package batched_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// simulate runs batches against a table whose per-row cost changes after
// a number of rows, with a fixed per-batch overhead, and returns the
// durations of each batch.
func simulate(start, batches int, costBefore, costAfter time.Duration, switchAt int64) []time.Duration {
	size := start
	var done int64
	var out []time.Duration
	for range batches {
		cost := costBefore
		if done >= switchAt {
			cost = costAfter
		}
		d := 5*time.Millisecond + time.Duration(size)*cost
		out = append(out, d)
		done += int64(size)
		size = batched.NextBatchSize(size, int64(size), d, 2*time.Second, 1, 2_000_000)
	}
	return out
}

func TestOptimizerConvergesFast(t *testing.T) {
	t.Parallel()
	// 4µs per row (250k rows/s), from GitLab's 1,000-row start.
	ds := simulate(1000, 20, 4*time.Microsecond, 40*time.Microsecond, 3_000_000)
	within := func(d time.Duration) bool { return d > 1500*time.Millisecond && d < 2600*time.Millisecond }
	first := -1
	for i, d := range ds {
		if within(d) {
			first = i
			break
		}
	}
	if first < 0 || first > 8 {
		t.Fatalf("no convergence within 8 batches: %v", ds)
	}
	// Then the table gets 10x slower: one long batch, then back near the
	// target within three.
	var slowIdx int
	for i, d := range ds {
		if d > 4*time.Second {
			slowIdx = i
			break
		}
	}
	if slowIdx == 0 {
		t.Fatalf("the slowdown never showed: %v", ds)
	}
	for _, d := range ds[slowIdx+3:] {
		if !within(d) {
			t.Fatalf("did not re-converge after the slowdown at %d: %v", slowIdx, ds)
		}
	}
	// Steady: once converged, sizes stay within 10%.
	for _, d := range ds[first+2 : slowIdx] {
		if d < 1800*time.Millisecond || d > 2200*time.Millisecond {
			t.Fatalf("unsteady before the change: %v", ds)
		}
	}
}

func TestOptimizerBounds(t *testing.T) {
	t.Parallel()
	if got := batched.NextBatchSize(1000, 1000, time.Millisecond, 2*time.Second, 1, 3000); got != 3000 {
		t.Fatalf("max bound: %d", got)
	}
	if got := batched.NextBatchSize(1000, 1000, time.Hour, 2*time.Second, 1, 3000); got < 1 || got > 1000/8+1 {
		t.Fatalf("shrink cap: %d", got)
	}
	if got := batched.NextBatchSize(1000, 0, time.Second, 2*time.Second, 1, 3000); got != 1000 {
		t.Fatalf("no rows: %d", got)
	}
}

// On a real table whose rows get ~30x slower part-way through their ids
// (a trigger sleeping per row), the batch size shrinks after the switch
// and batch durations come back to the target within a few batches.
// Asserted on the job rows' sizes and on durations relative to the
// target, generously: the machine may be loaded.
func TestOptimizerAdaptsToSlowerRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	const fast, slow = 200_000, 40_000
	b.table(t, "shift", fast+slow)
	var boundary int64 // ids above it are slow
	if err := b.pool.QueryRow(ctx, `SELECT id FROM shift ORDER BY id OFFSET $1 LIMIT 1`, fast-1).Scan(&boundary); err != nil {
		t.Fatal(err)
	}
	// pg_sleep waits whole milliseconds, so every 10th slow row (ids are
	// multiples of 3) sleeps 1 ms: ~0.1 ms per row, ~30x slower than the
	// fast rows. Sleeping, not burning CPU, keeps the slowdown the same
	// on a loaded machine; a slow part far bigger than one sub-batch of
	// the fast part lets the optimizer show its reaction.
	if _, err := b.pool.Exec(ctx, fmt.Sprintf(`
		CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.0002); RETURN NEW; END $$;
		CREATE TRIGGER slow BEFORE UPDATE ON shift FOR EACH ROW WHEN (OLD.id > %d AND OLD.id %% 30 = 0) EXECUTE FUNCTION slow_row()`, boundary)); err != nil {
		t.Fatal(err)
	}
	const target = 300 * time.Millisecond
	e := b.engine(t, batched.Config{TargetBatchDuration: target})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "shift", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, res.Migration.ID); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	b.checkExactlyOnce(t, "shift")

	rows, err := b.pool.Query(ctx, `SELECT min_value, max_value, rows_done, status, extract(epoch FROM finished_at - started_at)::float8
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 ORDER BY id`, res.Migration.ID)
	if err != nil {
		t.Fatal(err)
	}
	type job struct {
		lo, hi, rows int64
		status       int16
		secs         float64
	}
	jobs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (job, error) {
		var j job
		return j, r.Scan(&j.lo, &j.hi, &j.rows, &j.status, &j.secs)
	})
	if err != nil {
		t.Fatal(err)
	}
	var fastSizes, slowSizes []int64
	var slowDurs []float64
	for _, j := range jobs {
		if j.status != int16(batched.JobSucceeded) {
			t.Fatalf("job %+v did not succeed", j)
		}
		switch {
		case j.hi <= boundary:
			fastSizes = append(fastSizes, j.rows)
		case j.lo > boundary:
			slowSizes = append(slowSizes, j.rows)
			slowDurs = append(slowDurs, j.secs)
		}
	}
	t.Logf("fast batches %v; slow batches %v; slow durations %v", fastSizes, slowSizes, slowDurs)
	if len(fastSizes) < 3 || len(slowSizes) < 6 {
		t.Fatalf("too few batches to judge: %d fast, %d slow", len(fastSizes), len(slowSizes))
	}
	if mf, ms := median(fastSizes), median(slowSizes); ms*2 > mf {
		t.Errorf("batch size did not shrink after the slowdown: median %d rows before, %d after", mf, ms)
	}
	// Within a few batches of the switch, sizes are down for good.
	last := fastSizes[len(fastSizes)-1]
	for i, n := range slowSizes[3 : len(slowSizes)-1] { // the very last batch is a short tail
		if n*2 > last {
			t.Errorf("slow batch %d has %d rows, last fast one %d", i+3, n, last)
		}
	}
	// And they take about the target again (the tail excluded).
	settled := slices.Clone(slowDurs[3 : len(slowDurs)-1])
	slices.Sort(settled)
	if md := time.Duration(settled[len(settled)/2] * float64(time.Second)); md < target/5 || md > 5*target {
		t.Errorf("median duration of settled slow batches %s, target %s", md, target)
	}
}

func median(v []int64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
