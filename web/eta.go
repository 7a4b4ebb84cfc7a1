package web

import (
	"fmt"
	"math"
	"time"
)

// Window summarises a migration's most recent succeeded batches of the
// current run (at most windowJobs of them).
type Window struct {
	Jobs          int64
	Start, End    time.Time // first started_at, last finished_at
	Rows          int64     // Σ batch_size
	IDs           int64     // Σ (max_value - min_value + 1)
	BusySeconds   float64   // Σ (finished_at - started_at)
	LastBatchSize int64
}

// Progress is what the UI says about how far a migration is and when it
// will be done.
type Progress struct {
	// Percent is GitLab's progress (migrated tuples / total_tuple_count),
	// or, when the table statistics were empty, the share of the id range
	// done; -1 when unknown.
	Percent float64
	// RowsPerSec is the wall-clock rate over the recent window, interval
	// waits and pauses included; 0 when unknown.
	RowsPerSec float64
	// ETA is the estimated time left; valid only if HasETA.
	ETA    time.Duration
	HasETA bool
	// State is a short word for the badge next to the ETA: "done",
	// "running", "estimating", "paused", "on hold", "stalled", "failed",
	// "finalizing".
	State string
	// Note explains the estimate or why there is none.
	Note string
}

// stalledAfter is how long an active migration may go without a finished
// batch before the UI stops pretending it knows the ETA.
func stalledAfter(m *Migration) time.Duration {
	cycle := time.Duration(m.Interval) * time.Second
	if m.Window.Jobs > 0 {
		cycle = max(cycle, time.Duration(m.Window.BusySeconds/float64(m.Window.Jobs)*float64(time.Second)))
	}
	return max(5*time.Minute, 3*cycle)
}

// Estimate computes progress, rate and ETA from a migration and its
// recent batches.
//
// The ETA is the id range still to do (beyond the last batch created, plus
// batches created but not yet succeeded) divided by a predicted id rate.
// The prediction starts from the measured wall-clock cycle of the recent
// batches (which includes the interval gate and pauses) and then rescales
// the batch duration to the migration's *current* batch_size, so that when
// the optimizer (or an operator) changes the batch size the ETA moves at
// once instead of after the next twenty batches. A migration that is
// paused, on hold, failed or has not finished a batch for a while says so
// instead of showing a number.
func Estimate(m *Migration, now time.Time) Progress {
	p := Progress{Percent: percent(m)}
	w := m.Window
	span := w.End.Sub(w.Start).Seconds()
	if w.Jobs > 0 && span > 0 {
		p.RowsPerSec = float64(w.Rows) / span
	}
	switch m.Status {
	case StatusFinished, StatusFinalized:
		p.State, p.Note = "done", "finished"
		if m.FinishedAt != nil {
			p.Note = "finished " + m.FinishedAt.UTC().Format(time.RFC3339)
		}
		return p
	case StatusFailed:
		p.State = "failed"
		p.Note = fmt.Sprintf("%d failed batch(es); retry to continue", m.FailedJobs)
		return p
	case StatusPaused:
		p.State, p.Note = "paused", "paused by an operator; resume to continue"
		return p
	}

	remaining := float64(m.UnfinishedIDs)
	if m.MaxValue != nil {
		from := int64(0)
		if m.Cursor != nil {
			from = *m.Cursor
		} else if m.MinValue != nil {
			from = *m.MinValue - 1
		}
		remaining += float64(max(*m.MaxValue-from, 0))
	}

	var hold time.Duration
	if m.OnHoldUntil != nil && m.OnHoldUntil.After(now) {
		hold = m.OnHoldUntil.Sub(now)
	}
	rate := predictedIDRate(m)
	switch {
	case remaining <= 0 && m.Status == StatusActive:
		p.State, p.HasETA = "running", true
		p.Note = "last batches running"
	case rate <= 0:
		p.State, p.Note = "estimating", "measuring the rate: needs two finished batches since the migration (re)started"
	default:
		p.State, p.HasETA = "running", true
		p.ETA = time.Duration(remaining / rate * float64(time.Second))
		p.Note = fmt.Sprintf("at %s ids/s with batch size %d", humanFloat(rate), m.BatchSize)
	}
	if m.Status == StatusFinalizing {
		p.State = "finalizing"
	}
	if hold > 0 {
		p.State = "on hold"
		reason := m.OnHoldReason
		if reason == "" {
			reason = "throttled by a health check (no reason recorded)"
		}
		p.Note = fmt.Sprintf("on hold until %s (%s): %s", m.OnHoldUntil.UTC().Format("15:04:05 MST"), humanDuration(hold), reason)
		if p.HasETA {
			p.ETA += hold
		}
		return p
	}
	if w.Jobs > 0 && now.Sub(w.End) > stalledAfter(m) {
		p.State, p.HasETA = "stalled", false
		p.Note = fmt.Sprintf("no batch finished for %s: is a worker running?", humanDuration(now.Sub(w.End)))
	}
	return p
}

// predictedIDRate returns the expected ids per second at the current batch
// size, 0 when there is not enough data.
func predictedIDRate(m *Migration) float64 {
	w := m.Window
	if w.Jobs < 2 || w.Rows <= 0 || w.IDs <= 0 {
		return 0
	}
	n := float64(w.Jobs)
	cycle := w.End.Sub(w.Start).Seconds() / n // wall time per batch
	if cycle <= 0 {
		return 0
	}
	avgDur := w.BusySeconds / n
	avgRows := float64(w.Rows) / n
	cur := float64(m.BatchSize)
	if cur <= 0 {
		cur = avgRows
	}
	// Batch duration scales roughly linearly with rows.
	newDur := avgDur * cur / avgRows
	interval := float64(m.Interval)
	var newCycle float64
	if interval > 0 && cycle <= 1.1*interval {
		// Interval-bound: a new batch starts every interval unless the
		// batch itself takes longer.
		newCycle = max(cycle, newDur)
	} else {
		// Duration-bound: keep the measured overhead (pauses, scheduling).
		newCycle = max(cycle-avgDur, 0) + newDur
	}
	if newCycle <= 0 {
		return 0
	}
	idsPerRow := float64(w.IDs) / float64(w.Rows)
	return cur * idsPerRow / newCycle
}

func percent(m *Migration) float64 {
	if m.Status == StatusFinished || m.Status == StatusFinalized {
		return 100
	}
	if m.TotalTupleCount != nil && *m.TotalTupleCount > 0 {
		return min(100, 100*float64(m.MigratedTuples)/float64(*m.TotalTupleCount))
	}
	if m.MinValue != nil && m.MaxValue != nil && *m.MaxValue >= *m.MinValue {
		total := float64(*m.MaxValue - *m.MinValue + 1)
		done := 0.0
		if m.Cursor != nil {
			done = float64(*m.Cursor-*m.MinValue+1) - float64(m.UnfinishedIDs)
		}
		return math.Max(0, math.Min(100, 100*done/total))
	}
	return -1
}

func humanFloat(f float64) string {
	switch {
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 10:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// humanDuration prints 3h12m, 4m05s, 12s.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	h := int64(d / time.Hour)
	mnt := int64(d/time.Minute) % 60
	s := int64(d/time.Second) % 60
	switch {
	case h >= 48:
		return fmt.Sprintf("%dd%02dh", h/24, h%24)
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, mnt)
	case mnt > 0:
		return fmt.Sprintf("%dm%02ds", mnt, s)
	}
	return fmt.Sprintf("%ds", s)
}
