package legacy_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/worker"
)

// pacedBundle runs BlockIt jobs through a paced worker (no MinInterval)
// on a real Redis; each perform waits on release until the test lets it go.
type pacedBundle struct {
	ctx     context.Context
	w       *legacy.Worker
	cfg     legacy.WorkerConfig
	started chan int
	release chan struct{}
	running atomic.Int32
	overlap atomic.Bool
}

type blockArgs struct{ N int }

func (blockArgs) Kind() string { return "BlockIt" }

func setupPaced(t *testing.T, mod func(*legacy.WorkerConfig)) *pacedBundle {
	t.Helper()
	rdb := testenv.Redis(t)
	b := &pacedBundle{ctx: testenv.Context(t), started: make(chan int, 16), release: make(chan struct{})}
	reg := legacy.NewRegistry()
	legacy.Add(reg, legacy.PerformFunc[blockArgs](func(ctx context.Context, j *legacy.Job[blockArgs]) error {
		if b.running.Add(1) > 1 {
			b.overlap.Store(true)
		}
		defer b.running.Add(-1)
		b.started <- j.Args.N
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}))
	legacy.Add(reg, legacy.PerformFunc[countArgs](func(context.Context, *legacy.Job[countArgs]) error { return nil }))
	b.cfg = legacy.WorkerConfig{Runner: &legacy.Runner{Registry: reg}, Client: sidekiq.NewClient(rdb), Redis: rdb,
		LeaseWait: 10 * time.Second, Logger: zaptest.NewLogger(t),
		Health: func(context.Context) (bool, string, error) { return true, "", nil }}
	if mod != nil {
		mod(&b.cfg)
	}
	w, err := legacy.NewWorker(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.w = w
	return b
}

func (b *pacedBundle) work(args string) error { return b.workIn(b.ctx, args) }

// workIn works one job whose context is ctx.
func (b *pacedBundle) workIn(ctx context.Context, args string) error {
	var wa legacy.WorkerArgs
	if err := worker.DecodeArgs(json.RawMessage(args), &wa); err != nil {
		return err
	}
	p, _ := sidekiq.ParseJob([]byte(`{"class":"BackgroundMigrationWorker","queue":"background_migration","retry":3,"jid":"j","args":` + args + `}`))
	return b.w.Work(ctx, &worker.Job[legacy.WorkerArgs]{Args: wa, JID: "j", Queue: legacy.QueueName, Payload: p})
}

// begin runs each job in its own goroutine and waits until all started.
func (b *pacedBundle) begin(args ...string) chan error {
	errs := make(chan error, len(args))
	for _, a := range args {
		go func() { errs <- b.work(a) }()
	}
	for range args {
		<-b.started
	}
	return errs
}

// mustWork runs jobs that must not fail (held ones are rescheduled).
func (b *pacedBundle) mustWork(t *testing.T, args ...string) {
	t.Helper()
	for _, a := range args {
		if err := b.work(a); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
}

// finish lets the blocked jobs end and checks they succeeded.
func (b *pacedBundle) finish(t *testing.T, errs chan error) {
	t.Helper()
	close(b.release)
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// scheduled returns the args of the scheduled jobs; queued those of the
// queue, oldest first.
func (b *pacedBundle) scheduled(t *testing.T) []string {
	t.Helper()
	return b.args(t, b.cfg.Redis.ZRange(b.ctx, "schedule", 0, -1))
}

func (b *pacedBundle) queued(t *testing.T) []string {
	t.Helper()
	xs := b.args(t, b.cfg.Redis.LRange(b.ctx, "queue:background_migration", 0, -1))
	slices.Reverse(xs)
	return xs
}

func (b *pacedBundle) args(t *testing.T, cmd *redis.StringSliceCmd) []string {
	t.Helper()
	xs, err := cmd.Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range xs {
		j, err := sidekiq.ParseJob([]byte(x))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(j.Args()))
	}
	return out
}

// With concurrency 1 the second job of a class waits for the first to end
// and then starts at once: the slot is released, not left to lapse.
func TestPacedSlotReleasedWhenJobEnds(t *testing.T) {
	t.Parallel()
	b := setupPaced(t, nil)
	errs := make(chan error, 2)
	go func() { errs <- b.work(`["BlockIt",[1]]`) }()
	first := <-b.started
	go func() { errs <- b.work(`["BlockIt",[2]]`) }()
	// The second cannot start while the first holds the slot; a job of
	// another class is not held up by it.
	b.mustWork(t, `["CountIt",[7]]`)
	b.release <- struct{}{}
	second := <-b.started
	b.release <- struct{}{}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if first+second != 3 || b.overlap.Load() {
		t.Fatalf("started %d then %d, overlap %v", first, second, b.overlap.Load())
	}
	if s := b.scheduled(t); len(s) != 0 {
		t.Fatalf("rescheduled %v", s)
	}
}

// A job that finds no free slot within LeaseWait goes back to the end of
// its queue with its lease attempts unchanged (waiting is not failing),
// and a per-class concurrency of 2 runs two at once.
func TestPacedBusyClassReschedulesWithoutLosingAttempts(t *testing.T) {
	t.Parallel()
	b := setupPaced(t, func(c *legacy.WorkerConfig) { c.Concurrency, c.LeaseWait = 2, 50*time.Millisecond })
	errs := b.begin(`["BlockIt",[1]]`, `["BlockIt",[2]]`)
	b.mustWork(t, `["BlockIt",[3],2]`, `["BlockIt",[4]]`)
	b.finish(t, errs)
	if s := strings.Join(b.queued(t), " "); s != `["BlockIt",[3],2] ["BlockIt",[4]]` || len(b.scheduled(t)) != 0 {
		t.Fatalf("queued %s, scheduled %v", s, b.scheduled(t))
	}
}

// The cluster-wide limit holds jobs of other classes too.
func TestPacedClusterLimit(t *testing.T) {
	t.Parallel()
	b := setupPaced(t, func(c *legacy.WorkerConfig) { c.MaxRunning, c.LeaseWait = 1, 50*time.Millisecond })
	errs := b.begin(`["BlockIt",[1]]`)
	b.mustWork(t, `["CountIt",[1]]`)
	b.finish(t, errs)
	if s := b.queued(t); len(s) != 1 || s[0] != `["CountIt",[1]]` {
		t.Fatalf("queued %v", s)
	}
}

// Bad arguments fail at once, to the dead set, even while the class's
// slot is taken; an unhealthy database reschedules with the reason kept.
func TestPacedBadArgsBeforeSlotAndHealth(t *testing.T) {
	t.Parallel()
	b := setupPaced(t, nil)
	errs := b.begin(`["BlockIt",[1]]`)
	for _, args := range []string{`["BlockIt",["x"]]`, `["BlockIt",[1,2]]`} {
		if err := b.work(args); !errors.Is(err, worker.ErrKill) || !errors.Is(err, legacy.ErrInvalidArgs) {
			t.Fatalf("%s: %v", args, err)
		}
	}
	b.finish(t, errs)
	b2 := setupPaced(t, func(c *legacy.WorkerConfig) {
		c.Health = func(context.Context) (bool, string, error) { return false, "replica lag 200MB", nil }
		c.Redis, c.Client = b.cfg.Redis, b.cfg.Client
	})
	b2.mustWork(t, `["CountIt",[9]]`)
	if s := b.scheduled(t); len(s) != 1 || s[0] != `["CountIt",[9]]` {
		t.Fatalf("scheduled %v", s)
	}
	ti, err := legacy.Throttled(b.ctx, b.cfg.Redis)
	if err != nil || ti == nil || !strings.Contains(ti.Reason, "replica lag 200MB") {
		t.Fatalf("throttle %+v %v", ti, err)
	}
}

// fakePacer stands in for batched.SharedPace: a pause of an hour after
// the first job (until that job's context ends), none after the others.
type fakePacer struct {
	waits, calls atomic.Int32
	done         chan time.Duration
}

func (p *fakePacer) Wait(context.Context) (time.Duration, error) {
	p.waits.Add(1)
	return 0, nil
}

func (p *fakePacer) Done(_ context.Context, work time.Duration) (time.Duration, string, error) {
	p.done <- work
	if p.calls.Add(1) > 1 {
		return 0, "", nil
	}
	return time.Hour, "contention: other sessions are using the database", nil
}

// While the database serves others a job is followed by the pause the
// shared pacing asks for, holding its class's slot (the class's next job
// waits; another class's does not), and `bm remaining` can say why.
func TestPacedPauseAfterJobHoldsTheSlot(t *testing.T) {
	t.Parallel()
	p := &fakePacer{done: make(chan time.Duration, 4)}
	b := setupPaced(t, func(c *legacy.WorkerConfig) { c.Pacer = p })
	ctx1, endPause := context.WithCancel(b.ctx)
	defer endPause()
	errs := make(chan error, 2)
	go func() { errs <- b.workIn(ctx1, `["BlockIt",[1]]`) }()
	<-b.started
	b.release <- struct{}{}
	if w := <-p.done; w <= 0 || p.waits.Load() != 1 {
		t.Fatalf("Done(%s) after %d waits", w, p.waits.Load())
	}
	// Done has answered; the reason is written right after it.
	testenv.Eventually(t, 10*time.Second, "the throttle reason", func() bool {
		ti, err := legacy.Throttled(b.ctx, b.cfg.Redis)
		return err == nil && ti != nil && ti.Reason == "paced: contention: other sessions are using the database"
	})
	go func() { errs <- b.work(`["BlockIt",[2]]`) }()
	b.mustWork(t, `["CountIt",[7]]`) // another class is not held up
	<-p.done
	if len(b.started) != 0 {
		t.Fatal("the class's next job started during the pause")
	}
	endPause() // the pause ends early (a shutdown); the job had succeeded
	if err := <-errs; err != nil {
		t.Fatalf("the paused job: %v", err)
	}
	if n := <-b.started; n != 2 || b.overlap.Load() {
		t.Fatalf("started %d, overlap %v", n, b.overlap.Load())
	}
	b.release <- struct{}{}
	<-p.done
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
