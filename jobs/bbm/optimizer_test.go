package bbm_test

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/jobs/bbm"
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
		size = bbm.NextBatchSize(size, int64(size), d, 2*time.Second, 1, 2_000_000)
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
	if got := bbm.NextBatchSize(1000, 1000, time.Millisecond, 2*time.Second, 1, 3000); got != 3000 {
		t.Fatalf("max bound: %d", got)
	}
	if got := bbm.NextBatchSize(1000, 1000, time.Hour, 2*time.Second, 1, 3000); got < 1 || got > 1000/8+1 {
		t.Fatalf("shrink cap: %d", got)
	}
	if got := bbm.NextBatchSize(1000, 0, time.Second, 2*time.Second, 1, 3000); got != 1000 {
		t.Fatalf("no rows: %d", got)
	}
}
