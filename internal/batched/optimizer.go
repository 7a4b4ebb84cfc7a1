package batched

import (
	"math"
	"time"
)

// Adaptive sizing.
//
// GitLab grows a batch by at most x1.2 per job from an EMA over the last 20
// jobs, so going from 1,000 to 500,000 rows takes ~35 jobs of two minutes.
// ferry instead estimates the throughput of each finished batch (rows per
// second of execution) and moves the batch size geometrically towards
// rate*target: most of the way in one step, capped at x4 up and /8 down so
// one noisy batch cannot swing it far. Batches far below the target are
// dominated by fixed overhead, which underestimates the rate, so they just
// grow x4. From 1,000 rows it reaches the size of a 2 s batch on a fast
// table in about six batches, and re-converges within two or three after a
// change in speed.
const (
	growCap      = 4.0
	shrinkCap    = 8.0
	growWeight   = 0.6 // weight of the new estimate when growing
	shrinkWeight = 0.8 // when shrinking: slow batches hurt, react faster
	// MinBatchSize is the smallest batch the optimizer picks. A floor of
	// 1,000 (GitLab's) would force slow tables into batches far over the
	// target, so ferry only keeps it at or above the sub-batch size.
	MinBatchSize = 1
)

// NextBatchSize returns the batch size after a batch of rows took dur,
// aiming at target, within [lo, hi].
func NextBatchSize(cur int, rows int64, dur, target time.Duration, lo, hi int) int {
	return nextSize(cur, rows, dur, target, lo, hi)
}

func nextSize(cur int, rows int64, dur, target time.Duration, lo, hi int) int {
	if cur < 1 {
		cur = 1
	}
	lo = max(lo, MinBatchSize)
	hi = max(hi, lo)
	if rows <= 0 || dur <= 0 || target <= 0 {
		return clampInt(cur, lo, hi)
	}
	var next float64
	if dur < target/8 && rows >= int64(cur) {
		next = float64(cur) * growCap
	} else {
		est := float64(rows) / dur.Seconds() * target.Seconds()
		w := growWeight
		if est < float64(cur) {
			w = shrinkWeight
		}
		next = math.Exp((1-w)*math.Log(float64(cur)) + w*math.Log(max(est, 1)))
		next = min(next, float64(cur)*growCap)
		next = max(next, float64(cur)/shrinkCap)
	}
	return clampInt(int(math.Round(next)), lo, hi)
}

// nextSubBatch adapts the rows per statement to the statement budget.
func nextSubBatch(cur int, rows int64, dur, budget time.Duration, batch int) int {
	if rows < int64(cur) { // a short tail says nothing about speed
		return cur
	}
	return nextSize(cur, rows, dur, budget, 1, max(batch, 1))
}

func clampInt(v, lo, hi int) int { return max(lo, min(v, hi)) }

// subBatchBudget is the time one sub-batch statement should take: short
// enough that row locks are held briefly, long enough that per-statement
// overhead stays around 1%.
func subBatchBudget(target time.Duration) time.Duration {
	return max(20*time.Millisecond, min(target/20, time.Second))
}
