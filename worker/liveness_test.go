package worker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// runLog records job executions of several runtimes: who ran what, when.
type runLog struct {
	mu      sync.Mutex
	runs    []jobRun
	started chan string // runtime name, on each start
}

type jobRun struct {
	by         string
	start, end time.Time
	cause      error
}

func newRunLog() *runLog { return &runLog{started: make(chan string, 16)} }

// registry returns a registry whose Echo jobs block until their context
// ends (or release is closed) and are logged as run by name.
func (l *runLog) registry(t *testing.T, name string, release <-chan struct{}) *Registry {
	return registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(ctx context.Context, _ *Job[echoArgs]) error {
			run := jobRun{by: name, start: time.Now()}
			l.started <- name
			var err error
			select {
			case <-ctx.Done():
				err = ctx.Err()
				run.cause = context.Cause(ctx)
			case <-release:
			}
			run.end = time.Now()
			l.mu.Lock()
			l.runs = append(l.runs, run)
			l.mu.Unlock()
			return err
		}))
	})
}

func (l *runLog) snapshot() []jobRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]jobRun(nil), l.runs...)
}

func (l *runLog) waitStart(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-l.started:
		if got != want {
			t.Fatalf("job started on %s, want %s", got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("job did not start on %s", want)
	}
}

// A runtime that cannot refresh its liveness cancels its running job with
// ErrLivenessLost and does not acknowledge it; another runtime takes the
// job over only after that, so the two never run it at once; the cut-off
// runtime keeps working once Redis answers again.
func TestRuntimeLivenessLost(t *testing.T) {
	t.Parallel()
	direct, px, viaProxy := proxiedRedis(t)

	rl := newRunLog()
	release := make(chan struct{})
	// Alive TTL 1 s: A gives up 500 ms after its last refresh; B recovers
	// once A's key has been missing for 500 ms.
	timing := Config{AliveTTL: time.Second, RecoveryInterval: 200 * time.Millisecond}
	cfgA := timing
	cfgA.Redis, cfgA.Registry, cfgA.Identity = viaProxy, rl.registry(t, "A", release), "a:1:0123456789ab"
	a := startRuntime(t, direct, cfgA)
	a.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	rl.waitStart(t, "A")

	cfgB := timing
	cfgB.Registry, cfgB.Identity = rl.registry(t, "B", release), "b:2:0123456789ab"
	startRuntime(t, direct, cfgB)

	px.cut()
	rl.waitStart(t, "B") // recovered from A's private list
	runs := rl.snapshot()
	if len(runs) != 1 || runs[0].by != "A" || !errors.Is(runs[0].cause, ErrLivenessLost) {
		t.Fatalf("before B started the job: runs = %+v, want A's run cancelled with ErrLivenessLost", runs)
	}
	if n := direct.ZCard(a.ctx, "retry").Val() + direct.ZCard(a.ctx, "dead").Val(); n != 0 {
		t.Errorf("the cancelled run was recorded as a failure (%d entries)", n)
	}

	px.restore()
	a.push(t, "Echo", `[2]`, sidekiq.PushOptions{})
	close(release)
	testenv.Eventually(t, 20*time.Second, "both jobs done and nothing left in flight", func() bool {
		keys, _ := direct.Keys(a.ctx, "ferry:inflight|*").Result()
		return len(rl.snapshot()) == 3 && len(keys) == 0 && direct.LLen(a.ctx, "queue:q").Val() == 0
	})
	for _, run := range rl.snapshot()[1:] {
		if run.cause != nil {
			t.Errorf("a run after the cut was cancelled: %+v", run)
		}
	}
}

// A runtime that loses its liveness and gets it back pushes the jobs it
// cancelled back itself (nobody recovered them meanwhile) and runs them
// again, once.
func TestRuntimeLivenessRegained(t *testing.T) {
	t.Parallel()
	direct, px, viaProxy := proxiedRedis(t)

	rl := newRunLog()
	release := make(chan struct{})
	b := startRuntime(t, direct, Config{Redis: viaProxy, Registry: rl.registry(t, "A", release),
		AliveTTL: time.Second, RecoveryInterval: 200 * time.Millisecond})
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	rl.waitStart(t, "A")
	px.cut()
	testenv.Eventually(t, 20*time.Second, "the run to be cancelled", func() bool { return len(rl.snapshot()) == 1 })
	if b.inflight("q") != 1 {
		t.Errorf("the cancelled job left the private list (in flight: %d)", b.inflight("q"))
	}
	px.restore()
	rl.waitStart(t, "A")
	close(release)
	testenv.Eventually(t, 20*time.Second, "the second run to finish and be acknowledged", func() bool {
		return len(rl.snapshot()) == 2 && b.inflight("q") == 0 && direct.LLen(b.ctx, "queue:q").Val() == 0
	})
	runs := rl.snapshot()
	if !errors.Is(runs[0].cause, ErrLivenessLost) || runs[1].cause != nil || runs[1].start.Before(runs[0].end) {
		t.Errorf("runs = %+v, want a cancelled run, then one complete run after it", runs)
	}
}
