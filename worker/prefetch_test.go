package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestPrefetchTarget(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := int64(time.Millisecond)
	p := prefetcher{at: t0}
	if n := p.target(t0.Add(time.Millisecond), 500, 0, 10); n != 0 {
		t.Errorf("before the first window: %d, want 0", n)
	}
	// 1,000 jobs of 10 µs: 10 slots run 5,000 in the 5 ms horizon; the cap
	// is 16 × concurrency, but nothing while the queues are shallow.
	if n := p.target(t0.Add(prefetchWindow), 1000, 10*ms, 10); n != 0 {
		t.Errorf("shallow queues: %d, want 0", n)
	}
	p.deep = true
	if n := p.target(t0.Add(prefetchWindow+time.Millisecond), 1000, 10*ms, 10); n != 160 {
		t.Errorf("fast jobs, deep queue: %d, want 160 (16 × concurrency)", n)
	}
	// Jobs of 20 ms: 10 slots run 2.5 in 5 ms.
	if n := p.target(t0.Add(2*prefetchWindow), 1010, 10*ms+10*20*ms, 10); n != 2 {
		t.Errorf("20 ms jobs: %d, want 2", n)
	}
	// Jobs of 200 ms: none.
	if n := p.target(t0.Add(3*prefetchWindow), 1015, 10*ms+10*20*ms+5*200*ms, 10); n != 0 {
		t.Errorf("200 ms jobs: %d, want 0", n)
	}
	// No job finished in the window (e.g. every slot runs a long one): none.
	if n := p.target(t0.Add(4*prefetchWindow), 1015, 10*ms+10*20*ms+5*200*ms, 10); n != 0 {
		t.Errorf("no job finished: %d, want 0", n)
	}
}

// argLog records the N of each Echo job run, and blocks the one whose N is
// blockN until release is closed (or its context ends).
type argLog struct {
	mu      sync.Mutex
	done    []int // N of runs that finished
	aborted []int // N of runs cancelled
	blocked chan int
}

func (l *argLog) registry(t *testing.T, blockN int, release <-chan struct{}) *Registry {
	return registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(ctx context.Context, j *Job[echoArgs]) error {
			if j.Args.N == blockN {
				l.blocked <- j.Args.N
				select {
				case <-release:
				case <-ctx.Done():
					l.mu.Lock()
					l.aborted = append(l.aborted, j.Args.N)
					l.mu.Unlock()
					return ctx.Err()
				}
			}
			l.mu.Lock()
			l.done = append(l.done, j.Args.N)
			l.mu.Unlock()
			return nil
		}))
	})
}

func (l *argLog) snapshot() (done, aborted []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.done), slices.Clone(l.aborted)
}

// Jobs fetched ahead of a free slot run, each exactly once, and the
// private list is empty at the end.
func TestRuntimePrefetchRunsEveryJobOnce(t *testing.T) {
	t.Parallel()
	l := &argLog{blocked: make(chan int, 1)}
	b := startRuntimeWith(t, nil, Config{Registry: l.registry(t, -1, nil), Concurrency: 3},
		func(r *Runtime) { r.prefetchHook = func() int { return 8 } })
	const n = 500
	for i := range n {
		b.push(t, "Echo", fmt.Sprintf("[%d]", i), sidekiq.PushOptions{})
	}
	testenv.Eventually(t, 30*time.Second, "every job run and acknowledged", func() bool {
		done, _ := l.snapshot()
		return len(done) >= n && b.inflight("q") == 0 && b.rdb.LLen(b.ctx, "queue:q").Val() == 0
	})
	done, _ := l.snapshot()
	slices.Sort(done)
	for i, got := range done {
		if got != i {
			t.Fatalf("runs (sorted) = %v..., want each of 0..%d once", done[:min(len(done), i+3)], n-1)
		}
	}
	if len(done) != n {
		t.Errorf("%d runs, want %d", len(done), n)
	}
	if b.rt.ranAhead.Load() == 0 {
		t.Errorf("no job was started from the jobs fetched ahead")
	}
}

// Quiet with jobs fetched ahead: they do not start and go back to the
// front of their queue in their order; the Busy page shows only the
// running job.
func TestRuntimePrefetchQuietPushesBack(t *testing.T) {
	t.Parallel()
	l := &argLog{blocked: make(chan int, 1)}
	release := make(chan struct{})
	rdb := testenv.Redis(t)
	const n = 20
	pushEchos(t, rdb, 0, n) // before the start: the first fetch takes 1 + 4
	b := startRuntimeWith(t, rdb, Config{Registry: l.registry(t, 0, release), Concurrency: 1},
		func(r *Runtime) { r.prefetchHook = func() int { return 4 } })
	<-l.blocked // job 0 runs
	testenv.Eventually(t, 10*time.Second, "4 jobs fetched ahead of the running one", func() bool { return b.inflight("q") == 5 })
	testenv.Eventually(t, 5*time.Second, "heartbeat shows 1 busy", func() bool {
		return b.rdb.HGet(b.ctx, b.rt.Identity(), "busy").Val() == "1" && b.rdb.HLen(b.ctx, b.rt.Identity()+":work").Val() == 1
	})
	b.rt.Quiet()
	testenv.Eventually(t, 10*time.Second, "jobs fetched ahead pushed back", func() bool { return b.inflight("q") == 1 })
	// The queue's right end is fetched next: 1, 2, ... n-1 from the right.
	raw := b.rdb.LRange(b.ctx, "queue:q", 0, -1).Val()
	var got []int
	for i := len(raw) - 1; i >= 0; i-- {
		j, err := sidekiq.ParseJob([]byte(raw[i]))
		if err != nil {
			t.Fatal(err)
		}
		var args []int
		if err := json.Unmarshal(j.Args(), &args); err != nil {
			t.Fatal(err)
		}
		got = append(got, args[0])
	}
	want := make([]int, 0, n-1)
	for i := 1; i < n; i++ {
		want = append(want, i)
	}
	if !slices.Equal(got, want) {
		t.Errorf("queue after quiet, next first: %v, want %v", got, want)
	}
	close(release)
	testenv.Eventually(t, 10*time.Second, "the running job to finish", func() bool { return b.inflight("q") == 0 })
	if done, _ := l.snapshot(); !slices.Equal(done, []int{0}) {
		t.Errorf("runs = %v, want only the job running at quiet (0)", done)
	}
}

// Lost liveness with jobs fetched ahead: they never start under the lost
// epoch, stay in the private list, and once Redis answers again are pushed
// back and run, each once.
func TestRuntimePrefetchLivenessLost(t *testing.T) {
	t.Parallel()
	direct, px, viaProxy := proxiedRedis(t)

	l := &argLog{blocked: make(chan int, 4)}
	release := make(chan struct{})
	pushEchos(t, direct, 1, 4) // before the start: the first fetch takes 1 + 3
	b := startRuntimeWith(t, direct, Config{Redis: viaProxy, Registry: l.registry(t, 1, release), Concurrency: 1,
		AliveTTL: time.Second, RecoveryInterval: 200 * time.Millisecond},
		func(r *Runtime) { r.prefetchHook = func() int { return 3 } })
	<-l.blocked // job 1 runs
	testenv.Eventually(t, 10*time.Second, "3 jobs fetched ahead", func() bool { return b.inflight("q") == 4 })
	px.cut()
	testenv.Eventually(t, 20*time.Second, "the running job to be cancelled", func() bool {
		_, aborted := l.snapshot()
		return len(aborted) == 1
	})
	if done, _ := l.snapshot(); len(done) != 0 {
		t.Errorf("jobs ran after liveness was lost: %v", done)
	}
	if n := b.inflight("q"); n != 4 {
		t.Errorf("private list holds %d jobs after liveness was lost, want all 4", n)
	}
	px.restore()
	<-l.blocked // job 1 again
	close(release)
	testenv.Eventually(t, 20*time.Second, "every job run once and acknowledged", func() bool {
		done, _ := l.snapshot()
		return len(done) == 4 && b.inflight("q") == 0 && direct.LLen(b.ctx, "queue:q").Val() == 0
	})
	done, aborted := l.snapshot()
	slices.Sort(done)
	if !slices.Equal(done, []int{1, 2, 3, 4}) || !slices.Equal(aborted, []int{1}) {
		t.Errorf("finished runs %v, cancelled %v; want 1-4 once each and only 1 cancelled", done, aborted)
	}
	if n := direct.ZCard(b.ctx, "retry").Val() + direct.ZCard(b.ctx, "dead").Val(); n != 0 {
		t.Errorf("%d retry/dead entries, want none", n)
	}
}

// pushEchos pushes Echo jobs [from] .. [from+n-1] to queue q in one call,
// oldest (next to be fetched) first.
func pushEchos(t *testing.T, rdb *redis.Client, from, n int) {
	t.Helper()
	args := make([]json.RawMessage, n)
	for i := range args {
		args[i] = json.RawMessage(fmt.Sprintf("[%d]", from+i))
	}
	if _, err := sidekiq.NewClient(rdb).PushBulk(testenv.Context(t), "Echo", args, sidekiq.PushOptions{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
}

// Fetching ahead keeps Sidekiq's queue order: strict queues are drained
// in order, and weighted ones are first in proportion to their weights.
func TestRuntimePrefetchQueueOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		queues      []sidekiq.WeightedQueue
		concurrency int
		each        int
	}{
		{"strict", []sidekiq.WeightedQueue{{Name: "a"}, {Name: "b"}}, 1, 300},
		{"weighted", []sidekiq.WeightedQueue{{Name: "a", Weight: 3}, {Name: "b", Weight: 1}}, 2, 1500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var ran []string
			reg := registry(t, func(r *Registry) {
				AddWorker(r, WorkFunc[echoArgs](func(_ context.Context, j *Job[echoArgs]) error {
					mu.Lock()
					ran = append(ran, j.Queue)
					mu.Unlock()
					return nil
				}))
			})
			rdb := testenv.Redis(t)
			c := sidekiq.NewClient(rdb)
			args := make([]json.RawMessage, tc.each)
			for i := range args {
				args[i] = json.RawMessage(fmt.Sprintf("[%d]", i))
			}
			for _, q := range []string{"a", "b"} {
				if _, err := c.PushBulk(testenv.Context(t), "Echo", args, sidekiq.PushOptions{Queue: q}); err != nil {
					t.Fatal(err)
				}
			}
			b := startRuntimeWith(t, rdb, Config{Registry: reg, Queues: tc.queues, Concurrency: tc.concurrency},
				func(r *Runtime) { r.prefetchHook = func() int { return 4 * tc.concurrency } })
			testenv.Eventually(t, 60*time.Second, "both queues drained", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(ran) == 2*tc.each && b.inflight("a")+b.inflight("b") == 0
			})
			if b.rt.ranAhead.Load() == 0 {
				t.Errorf("no job was started from the jobs fetched ahead")
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.name == "strict" {
				for i, q := range ran {
					if want := map[bool]string{true: "a", false: "b"}[i < tc.each]; q != want {
						t.Fatalf("job %d ran from queue %s, want %s: strict order drains a first", i, q, want)
					}
				}
				return
			}
			// While both are full, a is first in 3 of 4 fetches (weights 3:1).
			const window = 1000
			na := 0
			for _, q := range ran[:window] {
				if q == "a" {
					na++
				}
			}
			share := float64(na) / window
			t.Logf("queue a ran %.2f of the first %d jobs", share, window)
			if share < 0.6 || share > 0.9 {
				t.Errorf("queue a ran %.2f of the first %d jobs, want about 0.75", share, window)
			}
		})
	}
}
