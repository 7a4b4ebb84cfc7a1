package web

import (
	"strings"
	"testing"
	"time"
)

func i64(v int64) *int64 { return &v }

// activeMigration has done ids 1..100k in 20 batches of 5k, one every 10s
// (interval 10s, batches take 2s), out of 1M ids.
func activeMigration(now time.Time) *Migration {
	return &Migration{
		Status: StatusActive, BatchSize: 5_000, Interval: 10,
		MinValue: i64(1), MaxValue: i64(1_000_000), Cursor: i64(100_000), TotalTupleCount: i64(1_000_000),
		MigratedTuples: 100_000,
		Window: Window{Jobs: 20, Start: now.Add(-200 * time.Second), End: now.Add(-2 * time.Second),
			Rows: 100_000, IDs: 100_000, BusySeconds: 40, LastBatchSize: 5_000},
	}
}

func TestWebEstimate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

	t.Run("steady", func(t *testing.T) {
		p := Estimate(activeMigration(now), now)
		// 900k ids left at 5k ids per ~9.9s cycle.
		if !p.HasETA || p.State != "running" || p.ETA < 29*time.Minute || p.ETA > 31*time.Minute {
			t.Fatalf("%+v", p)
		}
		if p.Percent != 10 {
			t.Fatalf("percent %v", p.Percent)
		}
	})
	t.Run("batch size doubled: interval-bound ETA halves at once", func(t *testing.T) {
		m := activeMigration(now)
		base := Estimate(m, now).ETA
		m.BatchSize = 10_000
		p := Estimate(m, now)
		if ratio := p.ETA.Seconds() / base.Seconds(); ratio < 0.45 || ratio > 0.55 {
			t.Fatalf("ETA %s -> %s (ratio %.2f), want about half", base, p.ETA, ratio)
		}
	})
	t.Run("batch size doubled: duration-bound ETA barely moves", func(t *testing.T) {
		m := activeMigration(now)
		m.Interval = 0
		m.Window.BusySeconds = 190 // batches back to back
		base := Estimate(m, now).ETA
		m.BatchSize = 10_000
		p := Estimate(m, now)
		if ratio := p.ETA.Seconds() / base.Seconds(); ratio < 0.9 || ratio > 1.1 {
			t.Fatalf("ETA %s -> %s (ratio %.2f), want about the same", base, p.ETA, ratio)
		}
	})
	t.Run("on hold adds the hold and says why", func(t *testing.T) {
		m := activeMigration(now)
		base := Estimate(m, now).ETA
		until := now.Add(10 * time.Minute)
		m.OnHoldUntil, m.OnHoldReason = &until, "WAL rate above SLO"
		p := Estimate(m, now)
		if p.State != "on hold" || p.ETA-base != 10*time.Minute || !strings.Contains(p.Note, "WAL rate above SLO") {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("paused has no ETA", func(t *testing.T) {
		m := activeMigration(now)
		m.Status = StatusPaused
		if p := Estimate(m, now); p.HasETA || p.State != "paused" {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("stalled has no ETA", func(t *testing.T) {
		m := activeMigration(now)
		if p := Estimate(m, now.Add(time.Hour)); p.HasETA || p.State != "stalled" {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("one batch is not a rate", func(t *testing.T) {
		m := activeMigration(now)
		m.Window.Jobs = 1
		if p := Estimate(m, now); p.HasETA || p.State != "estimating" {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("unknown total falls back to the id range", func(t *testing.T) {
		m := activeMigration(now)
		m.TotalTupleCount = nil
		if p := Estimate(m, now); p.Percent < 9.9 || p.Percent > 10.1 {
			t.Fatalf("%+v", p)
		}
	})
}
