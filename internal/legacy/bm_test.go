package legacy_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type countArgs struct{ N int }

func (countArgs) Kind() string { return "CountIt" }

func TestRegistryErrors(t *testing.T) {
	t.Parallel()
	reg := legacy.NewRegistry()
	legacy.Add(reg, legacy.PerformFunc[countArgs](func(context.Context, *legacy.Job[countArgs]) error { panic("kaboom") }))
	if err := legacy.AddSafely(reg, legacy.PerformFunc[countArgs](nil)); err == nil {
		t.Fatal("duplicate accepted")
	}
	r := &legacy.Runner{Registry: reg}
	ctx := context.Background()
	var pe *legacy.PanicError
	if err := r.Perform(ctx, "::CountIt", json.RawMessage(`[1]`)); !errors.As(err, &pe) {
		t.Fatalf("panic not recovered: %v", err)
	}
	for _, tc := range []struct {
		args string
		want error
	}{
		{`["x"]`, legacy.ErrInvalidArgs},
		{`[1,2]`, legacy.ErrInvalidArgs},
		{`{}`, legacy.ErrInvalidArgs},
	} {
		err := r.Perform(ctx, "CountIt", json.RawMessage(tc.args))
		if !errors.Is(err, tc.want) || !legacy.IsBadInput(err) {
			t.Errorf("%s: %v", tc.args, err)
		}
	}
	err := r.Perform(ctx, "Nope", nil)
	var ue *legacy.UnknownMigrationError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "CountIt") {
		t.Fatalf("unknown: %v", err)
	}
}

func TestValidateIdentifier(t *testing.T) {
	t.Parallel()
	for name, ok := range map[string]bool{
		"users": true, "Users_2": true, "_x$": true,
		"": false, "users; DROP TABLE x": false, `us"ers`: false, "us'ers": false, "1abc": false,
		"a b": false, "x--": false, strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
	} {
		err := legacy.ValidateIdentifier("table", name)
		if (err == nil) != ok {
			t.Errorf("%q: %v", name, err)
		}
		if err != nil && (!errors.Is(err, legacy.ErrInvalidIdentifier) || !strings.Contains(err.Error(), "table")) {
			t.Errorf("%q: unclear error %v", name, err)
		}
	}
}

// fakeLease is a lease on a fake clock.
type fakeLease struct {
	mu   sync.Mutex
	now  func() time.Time
	held map[string]time.Time
	keys []string
}

func (l *fakeLease) Obtain(_ context.Context, key string, ttl time.Duration) (bool, time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, key)
	if until, ok := l.held[key]; ok && l.now().Before(until) {
		return false, until.Sub(l.now()), nil
	}
	l.held[key] = l.now().Add(ttl)
	return true, 0, nil
}

type workerBundle struct {
	ctx     context.Context
	rdb     *redis.Client
	w       *legacy.Worker
	lease   *fakeLease
	now     time.Time
	ran     []int
	healthy bool
}

func setupWorker(t *testing.T) *workerBundle {
	t.Helper()
	b := &workerBundle{ctx: testenv.Context(t), rdb: testenv.Redis(t), healthy: true}
	// Later than the real clock, so reschedules land in the schedule set.
	b.now = time.Now().Add(24 * time.Hour).Truncate(time.Second)
	b.lease = &fakeLease{now: func() time.Time { return b.now }, held: map[string]time.Time{}}
	reg := legacy.NewRegistry()
	legacy.Add(reg, legacy.PerformFunc[countArgs](func(_ context.Context, j *legacy.Job[countArgs]) error {
		b.ran = append(b.ran, j.Args.N)
		return nil
	}))
	w, err := legacy.NewWorker(legacy.WorkerConfig{
		Runner: &legacy.Runner{Registry: reg}, Client: sidekiq.NewClient(b.rdb), Redis: b.rdb,
		Lease: b.lease, MinInterval: legacy.DefaultLeaseTTL,
		Health: func(context.Context) (bool, string, error) { return b.healthy, "replica lag 200MB", nil },
		Now:    func() time.Time { return b.now }, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.w = w
	return b
}

func (b *workerBundle) work(t *testing.T, args string) error {
	t.Helper()
	p, err := sidekiq.ParseJob([]byte(`{"class":"BackgroundMigrationWorker","queue":"background_migration","retry":3,"jid":"abc","args":` + args + `}`))
	if err != nil {
		t.Fatal(err)
	}
	var wa legacy.WorkerArgs
	if err := worker.DecodeArgs(p.Args(), &wa); err != nil {
		return err
	}
	return b.w.Work(b.ctx, &worker.Job[legacy.WorkerArgs]{Args: wa, JID: p.JID(), Queue: p.Queue(), Payload: p})
}

// scheduled returns the schedule set as (args, score) pairs.
func (b *workerBundle) scheduled(t *testing.T) map[string]float64 {
	t.Helper()
	zs, err := b.rdb.ZRangeWithScores(b.ctx, "schedule", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, z := range zs {
		j, err := sidekiq.ParseJob([]byte(z.Member.(string)))
		if err != nil {
			t.Fatal(err)
		}
		if j.Class() != legacy.WorkerClass || j.Queue() != legacy.QueueName || string(j.Get("retry")) != "3" {
			t.Fatalf("rescheduled job %s", z.Member)
		}
		out[string(j.Args())] = z.Score
	}
	return out
}

func TestWorkerLeaseReschedulesAndGivesUp(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	if err := b.work(t, `["CountIt",[1]]`); err != nil || len(b.ran) != 1 {
		t.Fatalf("first job: ran %v, %v", b.ran, err)
	}
	// Same class 30 s later: the lease still has 90 s to go.
	b.now = b.now.Add(30 * time.Second)
	if err := b.work(t, `["CountIt",[2]]`); err != nil || len(b.ran) != 1 {
		t.Fatalf("second job: ran %v, %v", b.ran, err)
	}
	s := b.scheduled(t)
	want := float64(b.now.Add(90*time.Second).UnixNano()) / 1e9
	if got, ok := s[`["CountIt",[2],4]`]; !ok || got != want {
		t.Fatalf("schedule = %v, want [\"CountIt\",[2],4] at %f", s, want)
	}
	// A retried job uses the ":retried" key, so it runs beside the cadence.
	if err := b.work(t, `["CountIt",[3],4]`); err != nil || len(b.ran) != 2 {
		t.Fatalf("retried job: ran %v, %v", b.ran, err)
	}
	if got := b.lease.keys; got[len(got)-1] != "BackgroundMigrationWorker:CountIt:retried" {
		t.Fatalf("lease keys %v", got)
	}
	// Out of attempts and no lease: dropped, nothing scheduled.
	b.rdb.Del(b.ctx, "schedule")
	if err := b.work(t, `["CountIt",[4],0]`); err != nil || len(b.ran) != 2 {
		t.Fatalf("last attempt: ran %v, %v", b.ran, err)
	}
	if s := b.scheduled(t); len(s) != 0 {
		t.Fatalf("dropped job was rescheduled: %v", s)
	}
	// After the TTL the regular lease is free again.
	b.now = b.now.Add(91 * time.Second)
	if err := b.work(t, `["CountIt",[5]]`); err != nil || len(b.ran) != 3 {
		t.Fatalf("after ttl: ran %v, %v", b.ran, err)
	}
}

func TestWorkerUnhealthyDatabaseReschedules(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	b.healthy = false
	if err := b.work(t, `["CountIt",[1]]`); err != nil || len(b.ran) != 0 {
		t.Fatalf("ran %v, %v", b.ran, err)
	}
	want := float64(b.now.Add(legacy.DefaultLeaseTTL).UnixNano()) / 1e9
	if s := b.scheduled(t); s[`["CountIt",[1],4]`] != want {
		t.Fatalf("schedule = %v", s)
	}
	b.rdb.Del(b.ctx, "schedule")
	b.now = b.now.Add(time.Hour)
	if err := b.work(t, `["CountIt",[1],0]`); err != nil || len(b.scheduled(t)) != 0 {
		t.Fatalf("unhealthy last attempt not dropped: %v", err)
	}
}

func TestWorkerPauseReschedulesWithoutDropping(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	if err := legacy.Pause(b.ctx, b.rdb, legacy.PauseInfo{By: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := b.work(t, `["CountIt",[1],2]`); err != nil || len(b.ran) != 0 {
		t.Fatalf("ran %v, %v", b.ran, err)
	}
	want := float64(b.now.Add(legacy.DefaultPausedDelay).UnixNano()) / 1e9
	// Attempts are kept: a pause is not a failed lease.
	if s := b.scheduled(t); s[`["CountIt",[1],2]`] != want {
		t.Fatalf("schedule = %v", s)
	}
	if len(b.lease.keys) != 0 {
		t.Fatal("paused job took the lease")
	}
	if was, err := legacy.Resume(b.ctx, b.rdb); !was || err != nil {
		t.Fatal(was, err)
	}
	if err := b.work(t, `["CountIt",[1],2]`); err != nil || len(b.ran) != 1 {
		t.Fatalf("after resume: ran %v, %v", b.ran, err)
	}
}

func TestWorkerBadInputGoesToDeadSet(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	err := b.work(t, `["CountIt",["not a number"]]`)
	if !errors.Is(err, worker.ErrKill) || !errors.Is(err, legacy.ErrInvalidArgs) {
		t.Fatalf("err = %v", err)
	}
	// An unknown class takes the normal retry path (it may be deployed later).
	err = b.work(t, `["NotYetDeployed",[]]`)
	if errors.Is(err, worker.ErrKill) || !errors.Is(err, legacy.ErrUnknownMigration) {
		t.Fatalf("err = %v", err)
	}
}

func TestRedisLease(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	ctx := testenv.Context(t)
	l := legacy.RedisLease{Redis: rdb}
	ok, _, err := l.Obtain(ctx, "BackgroundMigrationWorker:X", time.Minute)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	ok, rem, err := l.Obtain(ctx, "BackgroundMigrationWorker:X", time.Minute)
	if ok || err != nil || rem <= 50*time.Second || rem > time.Minute {
		t.Fatal(ok, rem, err)
	}
	// GitLab's key, so both fleets share the lease.
	if n, _ := rdb.Exists(ctx, "gitlab:exclusive_lease:BackgroundMigrationWorker:X").Result(); n != 1 {
		t.Fatal("lease key not GitLab's")
	}
}

// The default health of legacy jobs includes the WAL archiving backlog:
// on a server without archiving it is healthy; AllHealthy reports the
// first check that is not.
func TestWALArchiveCheckAndAllHealthy(t *testing.T) {
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)
	if ok, why, err := legacy.WALArchiveCheck(pool, 42)(ctx); err != nil || !ok {
		t.Fatalf("no archiving: %v %q %v", ok, why, err)
	}
	sick := func(context.Context) (bool, string, error) { return false, "sick", nil }
	fine := func(context.Context) (bool, string, error) { return true, "", nil }
	if ok, why, err := legacy.AllHealthy(fine, sick, fine)(ctx); ok || why != "sick" || err != nil {
		t.Fatalf("AllHealthy: %v %q %v", ok, why, err)
	}
	if ok, _, err := legacy.AllHealthy(fine, legacy.WALArchiveCheck(pool, 42))(ctx); !ok || err != nil {
		t.Fatalf("AllHealthy of healthy checks: %v %v", ok, err)
	}
}
