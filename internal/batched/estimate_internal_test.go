package batched

import (
	"math"
	"strings"
	"testing"
	"time"
)

// The ETA's rate on synthetic job histories: deterministic, no clocks.
func TestBBMETARate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	idle := cluster{Settings: Settings{MaxRunning: 2}, workers: true}
	eta := func(w window) float64 {
		v := activeView(now)
		v.win = w
		return etaOf(t, summarize(v, idle, now)).Seconds()
	}
	// 900k ids left at 500 ids/s.
	const steady = 1800.0

	t.Run("a lasting slowdown moves the ETA step by step, not at once", func(t *testing.T) {
		// 40 batches at 500 ids/s, then k at half that speed.
		prev := eta(steadyWindow(40, 5_000, 10, 2))
		if math.Abs(prev-steady) > 1 {
			t.Fatalf("steady ETA %.0fs, want %.0fs", prev, steady)
		}
		for k := 1; k <= 30; k++ {
			w := steadyWindow(40, 5_000, 10, 2+float64(k)*20)
			slow := steadyWindow(k, 5_000, 20, 2)
			w.ids, w.rows = append(w.ids, slow.ids...), append(w.rows, slow.rows...)
			w.cover, w.age = append(w.cover, slow.cover...), append(w.age, slow.age...)
			got := eta(w)
			if got < prev || got > 1.15*prev {
				t.Fatalf("after %d slow batches ETA %.0fs, before %.0fs: want a rise of at most 15%% per batch", k, got, prev)
			}
			if got > 2*steady+1 {
				t.Fatalf("ETA %.0fs beyond the slow rate's %.0fs", got, 2*steady)
			}
			prev = got
		}
		if prev < 1.8*steady {
			t.Fatalf("after 30 slow batches (10 minutes) ETA %.0fs, want close to %.0fs", prev, 2*steady)
		}
	})
	t.Run("paced batches: the ETA counts the sleeps", func(t *testing.T) {
		// Paced at 2%: each 5k-id batch takes 500 s of wall clock.
		if got := eta(steadyWindow(20, 5_000, 500, 2)); math.Abs(got-90_000) > 1 {
			t.Fatalf("ETA %.0fs, want 90000s (900k ids at 10 ids/s)", got)
		}
	})
	t.Run("a running batch that does not move raises the ETA as time passes", func(t *testing.T) {
		prev := 0.0
		for _, open := range []float64{0, 10, 60, 300} {
			w := steadyWindow(20, 5_000, 10, open)
			w.openSecs = open
			got := eta(w)
			if got < prev {
				t.Fatalf("open for %.0fs: ETA %.0fs, less than %.0fs before", open, got, prev)
			}
			prev = got
		}
		if prev <= steady {
			t.Fatalf("ETA %.0fs after 5 minutes without progress", prev)
		}
	})
	t.Run("the running batch's progress counts before it finishes", func(t *testing.T) {
		// No batch finished yet: 20k ids done in 10 s so far.
		got := eta(window{openIDs: 20_000, openRows: 20_000, openSecs: 10})
		if math.Abs(got-450) > 1 {
			t.Fatalf("ETA %.0fs, want 450s (900k ids at 2000 ids/s)", got)
		}
	})
	t.Run("the start-up ramp does not count once batches are full size", func(t *testing.T) {
		ramp := window{ids: []int64{1_000, 4_000, 16_000}, rows: []int64{1_000, 4_000, 16_000},
			cover: []float64{0.4, 0.5, 0.7}, age: []float64{30, 29.5, 28.8}}
		full := steadyWindow(10, 100_000, 2, 0.1) // 50k ids/s
		w := ramp
		w.ids, w.rows = append(w.ids, full.ids...), append(w.rows, full.rows...)
		w.cover, w.age = append(w.cover, full.cover...), append(w.age, full.age...)
		if ids, _ := rates(w); math.Abs(ids-50_000) > 1e-6 {
			t.Fatalf("rate %.0f ids/s, want 50000", ids)
		}
		// Two full batches are not enough to drop the ramp.
		w = ramp
		w.ids, w.rows = append(w.ids, full.ids[:2]...), append(w.rows, full.rows[:2]...)
		w.cover, w.age = append(w.cover, full.cover[:2]...), append(w.age, full.age[:2]...)
		if ids, _ := rates(w); ids >= 50_000 {
			t.Fatalf("rate %.0f ids/s without the ramp's batches", ids)
		}
	})
	t.Run("load arrives: the paced rate counts at once, the idle batches before it not at all", func(t *testing.T) {
		w := steadyWindow(40, 100_000, 2, 30) // 50k ids/s idle
		for range w.ids {
			w.paced = append(w.paced, false)
		}
		slow := steadyWindow(3, 5_000, 10, 2) // then 500 ids/s paced
		w.ids, w.rows = append(w.ids, slow.ids...), append(w.rows, slow.rows...)
		w.cover, w.age = append(w.cover, slow.cover...), append(w.age, slow.age...)
		w.paced = append(w.paced, true, true, true)
		if got := eta(w); math.Abs(got-steady) > 1 {
			t.Fatalf("ETA %.0fs, want %.0fs (the paced batches' rate)", got, steady)
		}
		// One paced batch alone is not yet a regime.
		w.ids, w.rows, w.cover, w.age, w.paced = w.ids[:41], w.rows[:41], w.cover[:41], w.age[:41], w.paced[:41]
		if got := eta(w); got > steady/2 {
			t.Fatalf("after one paced batch ETA %.0fs, want the idle rate still weighing in", got)
		}
	})
	t.Run("paced: the controller's swings move the ETA less than a 30 s memory would", func(t *testing.T) {
		// Paced batches of 5 s; the rate alternates 4x fast and slow every
		// 30 s, as the closed loop's duty does. The ETA at the end of a
		// fast block and at the end of the slow block after it.
		swing := func(paced bool) float64 {
			build := func(blocks int) window {
				var w window
				for b := range blocks {
					size := int64(1_000)
					if b%2 == 0 {
						size = 4_000
					}
					for range 6 {
						w.ids, w.rows, w.cover = append(w.ids, size), append(w.rows, size), append(w.cover, 5)
						w.paced = append(w.paced, paced)
					}
				}
				for i := range w.ids {
					w.age = append(w.age, float64(len(w.ids)-1-i)*5)
				}
				return w
			}
			fast, slow := eta(build(9)), eta(build(10))
			return slow / fast
		}
		if p, u := swing(true), swing(false); p > 1.25 || u < p+0.2 {
			t.Fatalf("ETA after a slow block / after a fast one: %.2f paced (want <= 1.25), %.2f unpaced (want well above)", p, u)
		}
	})
	t.Run("paced: the closed loop's climb fades once the batches after it cover time", func(t *testing.T) {
		// Batches of 4 s: two at the floor (2%, 5k ids/s), one rising to
		// 3.3%, then k at the ceiling (25k ids/s).
		build := func(k int, duties bool) window {
			var w window
			add := func(ids int64, low, end, high float64) {
				w.ids, w.rows, w.cover = append(w.ids, ids), append(w.rows, ids), append(w.cover, 4)
				w.paced = append(w.paced, true)
				w.lowDuty, w.endDuty, w.highDuty = append(w.lowDuty, low), append(w.endDuty, end), append(w.highDuty, high)
			}
			add(20_000, 0.02, 0.02, 0.02)
			add(20_000, 0.02, 0.02, 0.02)
			add(30_000, 0.02, 0.033, 0.033)
			for range k {
				add(100_000, closedLoopMaxDuty, closedLoopMaxDuty, closedLoopMaxDuty)
			}
			for i := range w.ids {
				w.age = append(w.age, float64(len(w.ids)-1-i)*4)
			}
			if !duties {
				w.lowDuty, w.endDuty, w.highDuty = nil, nil, nil
			}
			return w
		}
		if c := climbEnd(build(1, true), 0); c != 3 {
			t.Fatalf("climbEnd %d, want 3 (the first batch at the ceiling)", c)
		}
		// Read every 0.25 s while batches at the top run (the running
		// one's progress counts as it goes): the rate rises without a
		// jump.
		prev := 0.0
		for k := 1; k <= 6; k++ {
			for step := range 16 {
				w := build(k-1, true)
				secs := float64(step) / 4
				w.openIDs, w.openRows, w.openSecs = int64(25_000*secs), int64(25_000*secs), secs
				for i := range w.age {
					w.age[i] += secs
				}
				ids, _ := rates(w)
				if prev > 0 && (ids < 0.97*prev || ids > 1.1*prev) {
					t.Fatalf("%.2f s into batch %d at the top %.0f ids/s, %.0f a read before: want a smooth rise", secs, k, ids, prev)
				}
				prev = ids
			}
		}
		if prev, _ = rates(build(6, true)); prev < 0.98*25_000 {
			t.Fatalf("after 24 s at the top %.0f ids/s, want about 25000", prev)
		}
		if ids, _ := rates(build(6, false)); ids > 0.9*25_000 {
			t.Fatalf("without the duties the climb cannot be told: %.0f ids/s, want it counted", ids)
		}
	})
	t.Run("paced: what is not a climb counts in full", func(t *testing.T) {
		w := steadyWindow(12, 20_000, 4, 2) // a fixed 2%: the open loop
		for range w.ids {
			w.paced = append(w.paced, true)
			w.lowDuty, w.endDuty, w.highDuty = append(w.lowDuty, 0.02), append(w.endDuty, 0.02), append(w.highDuty, 0.02)
		}
		if c := climbEnd(w, 0); c != -1 {
			t.Fatalf("climbEnd %d for a duty that never moved, want -1", c)
		}
		// Up to 4.5%, then cut: from the cut on it is regulation.
		w.endDuty[3], w.highDuty[3] = 0.045, 0.045
		for i := 4; i < 12; i++ {
			w.lowDuty[i], w.endDuty[i], w.highDuty[i] = 0.045, 0.045, 0.045
		}
		w.lowDuty[6], w.endDuty[6] = 0.0225, 0.0225
		if c := climbEnd(w, 0); c != 6 {
			t.Fatalf("climbEnd %d, want 6 (the cut)", c)
		}
		w.lowDuty[6], w.endDuty[6] = 0.045, 0.03 // cut inside the batch
		if c := climbEnd(w, 0); c != 6 {
			t.Fatalf("climbEnd %d, want 6 (cut inside it)", c)
		}
		// 40 s of rising slowly is the rate the loop holds, not a climb.
		w.lowDuty[6], w.endDuty[6] = 0.045, 0.045
		w.endDuty[11], w.highDuty[11] = closedLoopMaxDuty, closedLoopMaxDuty
		if c := climbEnd(w, 0); c != -1 {
			t.Fatalf("climbEnd %d after 44 s below the ceiling, want -1", c)
		}
	})
	t.Run("sparse ids: the rate is in ids, the rows rate in rows", func(t *testing.T) {
		w := steadyWindow(20, 5_000, 10, 2)
		for i := range w.rows {
			w.rows[i] = 2_500
		}
		v := activeView(now)
		v.win = w
		p := summarize(v, idle, now)
		if etaOf(t, p).Seconds() != steady || p.RowsPerSec != 250 {
			t.Fatalf("%+v", p)
		}
	})
}

func TestBBMEstimateFromHistory(t *testing.T) {
	t.Parallel()
	copyRuns := []PastRun{
		{ID: 1, Class: "Copy", Rows: 1_000_000, Seconds: 10},   // 100k/s
		{ID: 2, Class: "Copy", Rows: 2_000_000, Seconds: 10},   // 200k/s
		{ID: 3, Class: "Copy", Rows: 1_500_000, Seconds: 10},   // 150k/s
		{ID: 4, Class: "Other", Rows: 1_000_000, Seconds: 1e3}, // 1k/s
		{ID: 5, Class: "Copy", Rows: 500, Seconds: 0.001},      // too small to trust
	}
	t.Run("same class: median rate, range from slowest to fastest widened 1.5x", func(t *testing.T) {
		e := estimateFrom(3_000_000, "Copy", copyRuns)
		if e == nil || e.Runs != 3 || !e.SameClass || e.RowsPerSec != 150_000 {
			t.Fatalf("%+v", e)
		}
		if e.Seconds != 20 || math.Abs(e.Low-10) > 1e-9 || math.Abs(e.High-45) > 1e-9 {
			t.Fatalf("%.1fs (%.1f-%.1f), want 20s (10-45)", e.Seconds, e.Low, e.High)
		}
	})
	t.Run("one run of the class: 2x either way", func(t *testing.T) {
		e := estimateFrom(1_000, "Other", copyRuns)
		if e == nil || e.Runs != 1 || e.Seconds != 1 || e.Low != 0.5 || e.High != 2 {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("no run of the class: every class, 2x either way", func(t *testing.T) {
		e := estimateFrom(1_000_000, "New", copyRuns)
		// Rates 1k, 100k, 150k, 200k: the median of an even count is the
		// geometric mean of the middle two.
		if e == nil || e.Runs != 4 || e.SameClass || math.Abs(e.RowsPerSec-math.Sqrt(100_000*150_000)) > 1e-6 {
			t.Fatalf("%+v", e)
		}
		if math.Abs(e.High-2000) > 1e-6 || math.Abs(e.Low-2.5) > 1e-6 {
			t.Fatalf("range %.1f-%.1f", e.Low, e.High)
		}
	})
	t.Run("no usable run", func(t *testing.T) {
		if e := estimateFrom(1_000, "Copy", copyRuns[4:]); e != nil {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("text says what it rests on", func(t *testing.T) {
		e := estimateFrom(720_000_000, "Copy", copyRuns)
		e.RowsFrom, e.MaxDuty = "pg_class.reltuples", 0.02
		got := e.Text()
		for _, want := range []string{"about 1h20m (40 min-3h00m)", "720,000,000 rows to go (pg_class.reltuples)",
			"from 3 finished migrations of the same class on this database at 150k rows/s", "2% of the time", "up to 50x longer"} {
			if !strings.Contains(got, want) {
				t.Fatalf("%q lacks %q", got, want)
			}
		}
	})
	t.Run("a read probe when nothing finished", func(t *testing.T) {
		e := estimateFromProbe(2_000_000, ReadProbe{Rows: 20_000, Seconds: 0.02}) // reads 1M rows/s
		e.RowsFrom = "pg_class.reltuples"
		if e.Seconds != 40 || e.Low != 16 || e.High != 100 {
			t.Fatalf("%+v", e)
		}
		if got := e.Text(); !strings.HasPrefix(got, "no rate measured yet on this database: guessed from a read of 20,000 rows in 20ms") ||
			!strings.Contains(got, "about 40 s (16 s-2 min)") || !strings.Contains(got, "a copy is usually 8-50x slower than that read") {
			t.Fatalf("%q", got)
		}
	})
	t.Run("a range that rounds to one figure is not printed", func(t *testing.T) {
		e := &Estimate{Rows: 3_000, RowsFrom: "x", Seconds: 1, Low: 0.8, High: 1.2, RowsPerSec: 3_000, Runs: 2, SameClass: true}
		if got := e.Text(); strings.Contains(got, "(1 s-1 s)") || !strings.Contains(got, "about 1 s for ") {
			t.Fatalf("%q", got)
		}
	})
	t.Run("nothing at all", func(t *testing.T) {
		e := &Estimate{Rows: 5, RowsFrom: "the ids left in its range"}
		if got := e.Text(); got != "no rate measured yet on this database (no finished batched migration here ran 10,000 rows and 1 s, enough to measure): 5 rows to go (the ids left in its range)" {
			t.Fatalf("%q", got)
		}
	})
}

func TestBBMEstimateQueuedRows(t *testing.T) {
	t.Parallel()
	total := int64(1_000)
	m := &Migration{MinValue: 1, MaxValue: 5_000, TotalTuples: &total}
	if rows, _ := rowsToGo(m, 0, nil, 0); rows != 1_000 {
		t.Fatalf("rows %d", rows)
	}
	m.TotalTuples = nil
	if rows, from := rowsToGo(m, 0, nil, 0); rows != 5_000 || from != "the ids left in its range" {
		t.Fatalf("rows %d from %s", rows, from)
	}
}
