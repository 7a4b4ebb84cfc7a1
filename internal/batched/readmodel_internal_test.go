package batched

import (
	"strings"
	"testing"
	"time"
)

// steadyWindow is n batches of size ids (and rows), one every cover
// seconds, the last one finished lastAge seconds ago.
func steadyWindow(n int, size int64, cover, lastAge float64) window {
	var w window
	for i := range n {
		w.ids = append(w.ids, size)
		w.rows = append(w.rows, size)
		w.cover = append(w.cover, cover)
		w.age = append(w.age, lastAge+float64(n-1-i)*cover)
	}
	return w
}

// activeView has done ids 1..100k in 20 batches of 5k, one every 10s
// (interval 10s, batches take 2s), out of 1M ids, and is running.
func activeView(now time.Time) *MigrationInfo {
	total := int64(1_000_000)
	started := now.Add(-time.Hour)
	cursor := int64(100_000)
	touched := now.Add(-2 * time.Second)
	return &MigrationInfo{
		Migration: &Migration{ID: 7, Status: Active, BatchSize: 5_000, MinValue: 1, MaxValue: 1_000_000, TotalTuples: &total,
			CreatedAt: started, StartedAt: &started},
		Interval: 10,
		agg:      agg{rowsDone: 100_000, jobs: 20, cursor: &cursor, doneIDs: 100_000, touched: &touched},
		win:      steadyWindow(20, 5_000, 10, 2),
	}
}

func etaOf(t *testing.T, p Progress) time.Duration {
	t.Helper()
	if p.ETA == nil {
		t.Fatalf("no ETA: %+v", p)
	}
	return time.Duration(*p.ETA * float64(time.Second))
}

func TestBBMReadModelEstimate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	idle := cluster{Settings: Settings{MaxRunning: 2}, workers: true}

	t.Run("steady", func(t *testing.T) {
		p := summarize(activeView(now), idle, now)
		// 900k ids left at 5k ids per ~9.9s cycle.
		if eta := etaOf(t, p); p.State != StateRunning || eta < 29*time.Minute || eta > 31*time.Minute {
			t.Fatalf("%+v", p)
		}
		if *p.Percent != 10 || p.RowsPerSec <= 0 || p.Reason != "" {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("a new batch size does not move the ETA", func(t *testing.T) {
		// The optimizer sizes batches to keep their duration: a new size
		// predicts no new rate, and rescaling by it made the ETA jump.
		v := activeView(now)
		base := etaOf(t, summarize(v, idle, now))
		v.BatchSize = 10_000
		if eta := etaOf(t, summarize(v, idle, now)); eta != base {
			t.Fatalf("ETA %s -> %s", base, eta)
		}
	})
	// Not moving: no rate, no ETA, a reason with the command that changes it.
	for _, tc := range []struct {
		name   string
		change func(v *MigrationInfo, c *cluster)
		at     time.Time
		state  State
		reason string
	}{
		{"on hold says why", func(v *MigrationInfo, _ *cluster) {
			until, r := now.Add(10*time.Minute), "autovacuum: WAL rate above SLO"
			v.OnHoldUntil, v.HoldReason = &until, &r
		}, now, StateOnHold, "on hold until 12:10:00 UTC: autovacuum: WAL rate above SLO"},
		{"paused", func(v *MigrationInfo, _ *cluster) { v.Status = Paused }, now, StatePaused, "paused; `ferry bbm resume 7` resumes"},
		{"pause-all", func(_ *MigrationInfo, c *cluster) { c.PausedAll = true }, now, StatePausedAll, PausedAllReason},
		{"failed", func(v *MigrationInfo, _ *cluster) { v.Status, v.agg.failed = Failed, 2 }, now, StateFailed,
			"2 failed batch(es): `ferry bbm show 7` lists the errors, `ferry bbm retry 7` runs them again"},
		{"stalled without workers", func(_ *MigrationInfo, c *cluster) { c.workers = false }, now.Add(time.Hour), StateStalled,
			"no worker has run a batch for 60 minutes: is `ferry worker` running?"},
		{"stalled with workers", func(*MigrationInfo, *cluster) {}, now.Add(10 * time.Minute), StateStalled, "are they reading queue background_migration?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, c := activeView(now), idle
			tc.change(v, &c)
			p := summarize(v, c, tc.at)
			if p.State != tc.state || p.ETA != nil || p.RowsPerSec != 0 || !strings.Contains(p.Reason, tc.reason) {
				t.Fatalf("%+v, want state %s and reason %q", p, tc.state, tc.reason)
			}
			if *p.Percent != 10 {
				t.Fatalf("percent %v", *p.Percent)
			}
		})
	}
	t.Run("paced keeps its rate and says why", func(t *testing.T) {
		v := activeView(now)
		r := "contention: other sessions are using the database: running 2% of the time (duty cycle), see `bbm.max_duty_under_load`"
		v.HoldReason = &r
		p := summarize(v, idle, now)
		if p.State != StatePaced || p.ETA == nil || p.Reason != strings.TrimPrefix(r, "contention: ") {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("no batch since it (re)started is not a rate", func(t *testing.T) {
		v := activeView(now)
		v.win = window{}
		if p := summarize(v, idle, now); p.ETA != nil || p.State != StateEstimating {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("unknown total falls back to the id range", func(t *testing.T) {
		v := activeView(now)
		v.TotalTuples = nil
		if p := summarize(v, idle, now); *p.Percent < 9.9 || *p.Percent > 10.1 {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("not finished is never 100%", func(t *testing.T) {
		v := activeView(now)
		v.agg.rowsDone = 2_000_000
		if p := summarize(v, idle, now); *p.Percent != 99.99 {
			t.Fatalf("%+v", p)
		}
	})
}

// A migration failed because this binary lacks its class: retry would fail
// again here, so the reason names mark-finished (and what it skips).
func TestBBMStateUnregisteredClassWayOut(t *testing.T) {
	t.Parallel()
	now := time.Now()
	v := activeView(now)
	reason := "class Gone::Backfill is not registered in this ferry binary"
	v.Status, v.HoldReason = Failed, &reason
	st, why := state(v, cluster{}, now)
	if st != StateFailed || !strings.Contains(why, "`ferry bbm mark-finished 7 --yes` (its remaining rows are NOT migrated)") {
		t.Fatalf("%s: %s", st, why)
	}
}

// Right after pause, batches still running say so: rows keep moving for a
// few seconds under "paused".
func TestBBMStatePausedWithBatchesFinishing(t *testing.T) {
	t.Parallel()
	now := time.Now()
	v := activeView(now)
	v.Status = Paused
	if _, why := state(v, cluster{}, now); why != "paused; `ferry bbm resume 7` resumes" {
		t.Fatalf("no batch running: %q", why)
	}
	v.agg.running = 3
	if st, why := state(v, cluster{}, now); st != StatePaused || why != "paused (3 running batch(es) finishing); `ferry bbm resume 7` resumes" {
		t.Fatalf("3 running: %s %q", st, why)
	}
}

// An active migration with no running batch that the scheduler or claim
// would not give one says what it waits for, and has no rate or ETA.
func TestBBMStateWaitingForATurn(t *testing.T) {
	t.Parallel()
	now := time.Now()
	v := activeView(now) // id 7, no running batch
	v.Table = "events"
	state := func(c cluster) Progress {
		t.Helper()
		p := summarize(v, c, now)
		if (p.State == StateWaiting) != (p.ETA == nil && p.RowsPerSec == 0 && p.Reason != "") {
			t.Fatalf("%s with rate %v, ETA %v, reason %q", p.State, p.RowsPerSec, p.ETA, p.Reason)
		}
		return p
	}
	busy := []activeMigration{{id: 3, table: "notes", running: true}, {id: 5, table: "users", running: true}, {id: 7, table: "events"}}
	// Max-running reached by two running migrations; the scheduler picked them.
	full := cluster{Settings: Settings{MaxRunning: 2}, workers: true, db: "ci", active: busy, picked: []int64{3, 5}}
	want := "waiting for a turn: at most 2 migrations run at once and ci_3, ci_5 come first (`ferry bbm set max-running 3 --db ci` runs more)"
	if p := state(full); p.State != StateWaiting || p.Reason != want {
		t.Fatalf("max-running reached: %s: %q", p.State, p.Reason)
	}
	// Picked by the scheduler, but claim finds the limit taken by running ones.
	full.picked = []int64{3, 7}
	if p := state(full); p.State != StateWaiting || !strings.Contains(p.Reason, "ci_3, ci_5 come first") {
		t.Fatalf("picked, limit taken: %s: %q", p.State, p.Reason)
	}
	// Picked with a free slot: not waiting.
	full.MaxRunning, full.picked = 3, []int64{3, 5, 7}
	if p := state(full); p.State != StateRunning {
		t.Fatalf("its turn: %s: %q", p.State, p.Reason)
	}
	one := cluster{Settings: Settings{MaxRunning: 1}, workers: true, active: busy[:1], picked: []int64{3}}
	if p := state(one); p.Reason != "waiting for a turn: at most 1 migration runs at once and 3 comes first (`ferry bbm set max-running 2` runs more)" {
		t.Fatalf("max-running 1: %q", p.Reason)
	}
	// Its own running batch is not a reason to wait.
	v.agg.running = 1
	self := cluster{Settings: Settings{MaxRunning: 1}, workers: true, active: []activeMigration{{id: 7, table: "events", running: true}}, picked: []int64{7}}
	if p := summarize(v, self, now); p.State == StateWaiting {
		t.Fatalf("with its own batch running: %s: %s", p.State, p.Reason)
	}
	v.agg.running = 0
	// One per table: an older active one goes first even between its
	// batches, a running one blocks unless both allow the same table.
	// (The cluster's active list holds this one too: its table key.)
	me := activeMigration{id: 7, table: "events"}
	older := cluster{Settings: Settings{MaxRunning: 5}, workers: true, active: []activeMigration{{id: 4, table: "events"}, me}, picked: []int64{4}}
	if p := state(older); p.State != StateWaiting || !strings.HasPrefix(p.Reason, "waiting for migration 4 on the same table") ||
		!strings.Contains(p.Reason, "`ferry bbm pause 4`") {
		t.Fatalf("older on the table: %s: %q", p.State, p.Reason)
	}
	// Active only since the cluster was read: its key is unknown, so no
	// same-table reason this time.
	late := older
	late.active = older.active[:1]
	if p := state(late); strings.Contains(p.Reason, "same table") {
		t.Fatalf("not in the cluster's read: %s: %q", p.State, p.Reason)
	}
	newer := cluster{Settings: Settings{MaxRunning: 5}, workers: true, active: []activeMigration{{id: 9, table: "events", running: true, sameTable: true}, me}, picked: []int64{9, 7}}
	if p := state(newer); p.State != StateWaiting {
		t.Fatalf("a running one on the table, only it allows: %s: %q", p.State, p.Reason)
	}
	v.AllowSameTable = true
	if p := state(newer); p.State != StateRunning {
		t.Fatalf("a running one on the table, both allow: %s: %q", p.State, p.Reason)
	}
	if p := state(older); p.State != StateRunning {
		// The scheduler lets a migration that allows it past an older one
		// between batches (candidatesSQL), and claim only minds running ones.
		t.Fatalf("an older one between batches, this one allows the same table: %s: %q", p.State, p.Reason)
	}
	v.AllowSameTable = false
	if p := state(cluster{workers: true}); p.State != StateWaiting || !strings.HasPrefix(p.Reason, "max-running is 0") {
		t.Fatalf("max-running 0: %s: %q", p.State, p.Reason)
	}
	// No worker: not "waiting" (state says no worker runs instead).
	if p := state(cluster{Settings: Settings{MaxRunning: 2}, active: busy, picked: []int64{3, 5}}); p.State == StateWaiting {
		t.Fatalf("no worker: %s: %q", p.State, p.Reason)
	}
}
