package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

type echoArgs struct {
	N    int
	Note string `sidekiq:",optional"`
}

func (echoArgs) Kind() string { return "Echo" }

type rtBundle struct {
	rdb    *redis.Client // direct, for checks
	rt     *Runtime
	client *sidekiq.Client
	ctx    context.Context
	cancel context.CancelFunc
	done   chan error
}

// startRuntime runs a Runtime on a fresh Redis database until the test
// ends. cfg.Redis defaults to that database; Queues to "q".
func startRuntime(t *testing.T, rdb *redis.Client, cfg Config) *rtBundle {
	t.Helper()
	return startRuntimeWith(t, rdb, cfg, nil)
}

// startRuntimeWith is startRuntime calling setup, if not nil, before Run.
func startRuntimeWith(t *testing.T, rdb *redis.Client, cfg Config, setup func(*Runtime)) *rtBundle {
	t.Helper()
	if rdb == nil {
		rdb = testenv.Redis(t)
	}
	if cfg.Redis == nil {
		cfg.Redis = rdb
	}
	if cfg.Queues == nil {
		cfg.Queues = []sidekiq.WeightedQueue{{Name: "q"}}
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 50 * time.Millisecond
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.Timeout == nil {
		cfg.Timeout = new(10 * time.Second)
	}
	if cfg.Identity == "" {
		cfg.Identity = "test:" + strconv.Itoa(int(time.Now().UnixNano()%1e6)) + ":0123456789ab"
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(rt)
	}
	ctx, cancel := context.WithCancel(testenv.Context(t))
	b := &rtBundle{rdb: rdb, rt: rt, client: sidekiq.NewClient(rdb), ctx: testenv.Context(t), cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- rt.Run(ctx) }()
	t.Cleanup(func() { b.stop(t) })
	// Running once the first heartbeat is in Redis.
	testenv.Eventually(t, 5*time.Second, "first heartbeat", func() bool {
		return rdb.Exists(b.ctx, rt.Identity()).Val() == 1
	})
	return b
}

// stop cancels Run and waits for it (idempotent).
func (b *rtBundle) stop(t *testing.T) error {
	t.Helper()
	b.cancel()
	select {
	case err, ok := <-b.done:
		if ok {
			close(b.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func (b *rtBundle) push(t *testing.T, class string, args string, opts sidekiq.PushOptions) string {
	t.Helper()
	if opts.Queue == "" {
		opts.Queue = "q"
	}
	jid, err := b.client.Push(b.ctx, class, json.RawMessage(args), opts)
	if err != nil {
		t.Fatal(err)
	}
	return jid
}

func (b *rtBundle) inflight(q string) int64 {
	return b.rdb.LLen(b.ctx, "ferry:inflight|"+b.rt.Identity()+"|"+q).Val()
}

func registry(t *testing.T, add ...func(*Registry)) *Registry {
	t.Helper()
	r := NewRegistry()
	for _, f := range add {
		f(r)
	}
	return r
}

func TestRuntimeRunsJobs(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[int]int{}
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(_ context.Context, j *Job[echoArgs]) error {
			mu.Lock()
			seen[j.Args.N]++
			mu.Unlock()
			return nil
		}))
	})
	b := startRuntime(t, nil, Config{Registry: reg, Concurrency: 4})
	const n = 200
	args := make([]json.RawMessage, n)
	for i := range args {
		args[i] = json.RawMessage(fmt.Sprintf("[%d]", i))
	}
	if _, err := b.client.PushBulk(b.ctx, "Echo", args, sidekiq.PushOptions{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "all jobs run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	testenv.Eventually(t, 5*time.Second, "private list drained", func() bool { return b.inflight("q") == 0 })
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("job %d ran %d times", i, seen[i])
		}
	}
	// Stats are flushed at exit; the process is gone from the Busy page.
	if got := b.rdb.Get(b.ctx, "stat:processed").Val(); got != strconv.Itoa(n) {
		t.Errorf("stat:processed = %q, want %d", got, n)
	}
	if got := b.rdb.Get(b.ctx, "stat:processed:"+time.Now().UTC().Format("2006-01-02")).Val(); got != strconv.Itoa(n) {
		t.Errorf("daily stat:processed = %q, want %d", got, n)
	}
	if b.rdb.Exists(b.ctx, "stat:failed").Val() != 0 {
		t.Error("stat:failed written without failures")
	}
	if b.rdb.SIsMember(b.ctx, "processes", b.rt.Identity()).Val() || b.rdb.HExists(b.ctx, "ferry:fetchers", b.rt.Identity()).Val() {
		t.Error("still registered after stop")
	}
	if err := b.rt.Run(b.ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("second Run = %v, want ErrStopped", err)
	}
}

type failArgs struct{ Mode string }

func (failArgs) Kind() string { return "Fail" }

func TestRuntimeFailures(t *testing.T) {
	t.Parallel()
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[failArgs](func(_ context.Context, j *Job[failArgs]) error {
			j.Payload.SetString("mutated", "yes") // must not reach the retry entry
			switch j.Args.Mode {
			case "panic":
				panic("kaboom")
			case "discard":
				return fmt.Errorf("not needed: %w", ErrDiscard)
			case "kill":
				return fmt.Errorf("hopeless: %w", ErrKill)
			}
			return errors.New("plain failure")
		}))
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error { return nil }))
	})
	b := startRuntime(t, nil, Config{Registry: reg, Concurrency: 3})
	jids := map[string]string{
		"unknown": b.push(t, "Nope::Job", `[1]`, sidekiq.PushOptions{}),
		"badargs": b.push(t, "Echo", `["not an int"]`, sidekiq.PushOptions{}),
		"panic":   b.push(t, "Fail", `["panic"]`, sidekiq.PushOptions{Extra: map[string]json.RawMessage{"backtrace": json.RawMessage("true")}}),
		"plain":   b.push(t, "Fail", `["plain"]`, sidekiq.PushOptions{}),
		"discard": b.push(t, "Fail", `["discard"]`, sidekiq.PushOptions{}),
		"kill":    b.push(t, "Fail", `["kill"]`, sidekiq.PushOptions{}),
	}
	b.rdb.LPush(b.ctx, "queue:q", "{not json")
	testenv.Eventually(t, 10*time.Second, "failures recorded", func() bool {
		return b.rdb.ZCard(b.ctx, "retry").Val() == 4 && b.rdb.ZCard(b.ctx, "dead").Val() == 2 &&
			b.rdb.LLen(b.ctx, "queue:q").Val() == 0 && b.inflight("q") == 0
	})
	byJID := map[string]*sidekiq.Job{}
	for _, set := range []string{"retry", "dead"} {
		for _, m := range b.rdb.ZRange(b.ctx, set, 0, -1).Val() {
			j, err := sidekiq.ParseJob([]byte(m))
			if err != nil {
				if set == "dead" && m == "{not json" {
					continue
				}
				t.Fatalf("%s member %q: %v", set, m, err)
			}
			byJID[j.JID()] = j
			if j.Has("mutated") {
				t.Errorf("%s entry kept a worker's payload change: %s", set, m)
			}
		}
	}
	str := func(j *sidekiq.Job, k string) string {
		var s string
		_ = json.Unmarshal(j.Get(k), &s)
		return s
	}
	for name, want := range map[string][2]string{
		"unknown": {"NameError", "uninitialized constant Nope::Job"},
		"badargs": {"ArgumentError", "Echo: bad job arguments: argument 1 (N)"},
		"panic":   {"Ferry::Panic", "panic: kaboom"},
		"plain":   {"StandardError", "plain failure"},
		"kill":    {"StandardError", "hopeless: kill job"},
	} {
		j := byJID[jids[name]]
		if j == nil {
			t.Errorf("%s: no retry/dead entry", name)
			continue
		}
		if str(j, "error_class") != want[0] || !strings.HasPrefix(str(j, "error_message"), want[1]) {
			t.Errorf("%s: error_class %q, error_message %q; want %q, %q...", name, str(j, "error_class"), str(j, "error_message"), want[0], want[1])
		}
	}
	if byJID[jids["discard"]] != nil {
		t.Error("a discarded job was recorded")
	}
	if b.rdb.ZScore(b.ctx, "dead", "{not json").Err() != nil {
		t.Error("invalid payload not in the dead set")
	}
	if p := byJID[jids["panic"]]; p != nil {
		lines, err := sidekiq.DecodeBacktrace(str(p, "error_backtrace"))
		if err != nil || len(lines) == 0 || !strings.Contains(strings.Join(lines, "\n"), "runtime_test.go") {
			t.Errorf("panic backtrace = %v, %v", lines, err)
		}
	}
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	if p, f := b.rdb.Get(b.ctx, "stat:processed").Val(), b.rdb.Get(b.ctx, "stat:failed").Val(); p != "6" || f != "6" {
		t.Errorf("stat processed/failed = %s/%s, want 6/6", p, f)
	}
}

// Config.MaxRetries 0 is Sidekiq's max_retries 0: a retry:true job goes to
// the dead set on its first failure; a job's own retry:N still wins.
func TestRuntimeMaxRetriesZero(t *testing.T) {
	t.Parallel()
	b := startRuntime(t, nil, Config{Registry: registry(t), MaxRetries: new(0)})
	deadJID := b.push(t, "Nope::Job", `[1]`, sidekiq.PushOptions{Retry: json.RawMessage("true")})
	retryJID := b.push(t, "Nope::Job", `[2]`, sidekiq.PushOptions{Retry: sidekiq.RetryTimes(2)})
	testenv.Eventually(t, 10*time.Second, "failures recorded", func() bool {
		return b.rdb.ZCard(b.ctx, "dead").Val() == 1 && b.rdb.ZCard(b.ctx, "retry").Val() == 1 && b.inflight("q") == 0
	})
	member := func(set string) *sidekiq.Job {
		j, err := sidekiq.ParseJob([]byte(b.rdb.ZRange(b.ctx, set, 0, -1).Val()[0]))
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	d := member("dead")
	if n, ok := d.Int("retry_count"); d.JID() != deadJID || !ok || n != 0 || !d.Has("failed_at") || string(d.Get("retry")) != "true" {
		t.Errorf("dead entry %s: want jid %s, retry_count 0, failed_at, retry true", d.Raw(), deadJID)
	}
	if r := member("retry"); r.JID() != retryJID {
		t.Errorf("retry entry %s: want jid %s (retry:2 beats MaxRetries 0)", r.Raw(), retryJID)
	}
}

func TestRuntimeMiddlewareOrder(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var trace []string
	rec := func(s string) { mu.Lock(); trace = append(trace, s); mu.Unlock() }
	mw := func(name string) Middleware {
		return func(ctx context.Context, j *sidekiq.Job, next func(context.Context) error) error {
			rec(name + ">" + j.Class())
			err := next(ctx)
			rec("<" + name)
			return err
		}
	}
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error { rec("work"); return nil }))
	})
	b := startRuntime(t, nil, Config{Registry: reg, Middleware: []Middleware{mw("a"), mw("b")}})
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	testenv.Eventually(t, 5*time.Second, "job run", func() bool { mu.Lock(); defer mu.Unlock(); return len(trace) == 5 })
	if got := strings.Join(trace, " "); got != "a>Echo b>Echo work <b <a" {
		t.Errorf("trace = %s", got)
	}
}

func TestRuntimeConcurrencyLimit(t *testing.T) {
	t.Parallel()
	var cur, peak atomic.Int64
	gate := make(chan struct{})
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error {
			n := cur.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			<-gate
			cur.Add(-1)
			return nil
		}))
	})
	b := startRuntime(t, nil, Config{Registry: reg, Concurrency: 3})
	for i := range 20 {
		b.push(t, "Echo", fmt.Sprintf("[%d]", i), sidekiq.PushOptions{})
	}
	testenv.Eventually(t, 5*time.Second, "3 running", func() bool { return cur.Load() == 3 })
	// No prefetch: exactly the running jobs left the queue. The Busy page
	// shows them (busy and the work hashes).
	testenv.Eventually(t, 5*time.Second, "heartbeat shows 3 busy", func() bool {
		return b.rdb.HGet(b.ctx, b.rt.Identity(), "busy").Val() == "3" && b.rdb.HLen(b.ctx, b.rt.Identity()+":work").Val() == 3
	})
	if q, p := b.rdb.LLen(b.ctx, "queue:q").Val(), b.inflight("q"); q != 17 || p != 3 {
		t.Errorf("queue/private = %d/%d, want 17/3", q, p)
	}
	var w struct {
		Queue   string `json:"queue"`
		Payload string `json:"payload"`
		RunAt   int64  `json:"run_at"`
	}
	for _, v := range b.rdb.HGetAll(b.ctx, b.rt.Identity()+":workers").Val() {
		if err := json.Unmarshal([]byte(v), &w); err != nil || w.Queue != "q" || !strings.Contains(w.Payload, `"class":"Echo"`) || w.RunAt < time.Now().Unix()-60 {
			t.Errorf("work entry %s: %v", v, err)
		}
	}
	close(gate)
	testenv.Eventually(t, 10*time.Second, "all done", func() bool {
		return b.rdb.LLen(b.ctx, "queue:q").Val() == 0 && b.inflight("q") == 0 && cur.Load() == 0
	})
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency = %d, want 3", p)
	}
}

// heartbeatQuiet waits for the process hash to say quiet="true".
func waitQuiet(t *testing.T, b *rtBundle) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, "quiet=true in the heartbeat", func() bool {
		return b.rdb.HGet(b.ctx, b.rt.Identity(), "quiet").Val() == "true"
	})
}

// waitBeats waits until n more heartbeats have been written.
func waitBeats(t *testing.T, b *rtBundle, n int) {
	t.Helper()
	last := b.rdb.HGet(b.ctx, b.rt.Identity(), "beat").Val()
	for range n {
		testenv.Eventually(t, 5*time.Second, "next heartbeat", func() bool {
			cur := b.rdb.HGet(b.ctx, b.rt.Identity(), "beat").Val()
			if cur != last {
				last = cur
				return true
			}
			return false
		})
	}
}

func TestRuntimeQuiet(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"method", "redis signal"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			var ran atomic.Int64
			reg := registry(t, func(r *Registry) {
				AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error { ran.Add(1); return nil }))
			})
			b := startRuntime(t, nil, Config{Registry: reg})
			b.rdb.HSet(b.ctx, b.rt.Identity(), "quiet", "unset")
			if how == "method" {
				b.rt.Quiet()
			} else {
				b.rdb.LPush(b.ctx, b.rt.Identity()+"-signals", "TSTP")
			}
			waitQuiet(t, b)
			// Quiet is in effect once the beat reports it; give the fetch
			// loop (blocking ≤ 1 s per round) a few beats' time anyway.
			testenv.Eventually(t, 5*time.Second, "fetcher idle", func() bool { return b.inflight("q") == 0 })
			b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
			waitBeats(t, b, 3)
			deadline := time.Now().Add(2500 * time.Millisecond) // > one BLMOVE round
			for time.Now().Before(deadline) {
				waitBeats(t, b, 1)
			}
			if ran.Load() != 0 || b.rdb.LLen(b.ctx, "queue:q").Val() != 1 {
				t.Errorf("a quiet process fetched: ran %d, queue %d", ran.Load(), b.rdb.LLen(b.ctx, "queue:q").Val())
			}
			select {
			case err := <-b.done:
				t.Fatalf("quiet stopped Run: %v", err)
			default:
			}
		})
	}
}

func TestRuntimeTermViaRedis(t *testing.T) {
	t.Parallel()
	b := startRuntime(t, nil, Config{Registry: NewRegistry()})
	b.rdb.LPush(b.ctx, b.rt.Identity()+"-signals", "TERM")
	select {
	case err := <-b.done:
		close(b.done)
		if err != nil {
			t.Errorf("Run = %v, want nil after TERM", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("TERM via Redis did not stop Run")
	}
	select {
	case <-b.rt.Stopped():
	default:
		t.Error("Stopped() not closed")
	}
}

func TestRuntimeGracefulStop(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	release := make(chan struct{})
	var finished atomic.Bool
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(ctx context.Context, _ *Job[echoArgs]) error {
			close(started)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			finished.Store(true)
			return nil
		}))
	})
	b := startRuntime(t, nil, Config{Registry: reg})
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	<-started
	b.cancel() // stop requested; the job may finish
	waitQuiet(t, b)
	waitBeats(t, b, 2)
	select {
	case <-b.done:
		t.Fatal("Run returned while a job was running within the timeout")
	default:
	}
	close(release)
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() || b.inflight("q") != 0 || b.rdb.LLen(b.ctx, "queue:q").Val() != 0 || b.rdb.ZCard(b.ctx, "retry").Val() != 0 {
		t.Error("graceful stop did not let the job finish and ack")
	}
}

// untilCancelled is a registry whose echoArgs job closes started and then
// runs until its context is cancelled.
func untilCancelled(t *testing.T) (*Registry, <-chan struct{}) {
	t.Helper()
	started := make(chan struct{})
	return registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(ctx context.Context, _ *Job[echoArgs]) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}))
	}), started
}

func TestRuntimeHardStop(t *testing.T) {
	t.Parallel()
	reg, started := untilCancelled(t)
	b := startRuntime(t, nil, Config{Registry: reg, Timeout: new(300 * time.Millisecond)})
	b.push(t, "Echo", `[1,"<&>"]`, sidekiq.PushOptions{})
	<-started
	orig := b.rdb.LIndex(b.ctx, "ferry:inflight|"+b.rt.Identity()+"|q", 0).Val()
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := b.rdb.LRange(b.ctx, "queue:q", 0, -1).Val(); len(got) != 1 || got[0] != orig {
		t.Errorf("queue:q = %q, want the original bytes %q", got, orig)
	}
	if b.inflight("q") != 0 || b.rdb.ZCard(b.ctx, "retry").Val() != 0 || b.rdb.ZCard(b.ctx, "dead").Val() != 0 {
		t.Error("hard stop left a private entry or recorded a failure")
	}
	// Sidekiq's Processor#stats counts Sidekiq::Shutdown as a failure too.
	if b.rdb.Get(b.ctx, "stat:processed").Val() != "1" || b.rdb.Get(b.ctx, "stat:failed").Val() != "1" {
		t.Errorf("an interrupted job: stat:processed %q, stat:failed %q; want 1 and 1",
			b.rdb.Get(b.ctx, "stat:processed").Val(), b.rdb.Get(b.ctx, "stat:failed").Val())
	}
}

// A job that ignores cancellation does not hold the stop past Timeout: the
// runtime pushes it back, waits out the rest of the deadline, and returns
// while the job still runs.
func TestRuntimeHardStopJobIgnoresCancellation(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	returned := make(chan struct{})
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error {
			defer close(returned)
			close(started)
			<-release
			return nil
		}))
	})
	core, logs := observer.New(zap.InfoLevel)
	b := startRuntime(t, nil, Config{Registry: reg, Timeout: new(300 * time.Millisecond), Logger: zap.New(core)})
	t.Cleanup(func() { close(release); <-returned }) // after b.stop: cleanups run last-in first-out
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	<-started
	t0 := time.Now()
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	// The contract, not a speed: Run returns within Timeout of the stop.
	// The slack is for a loaded machine; before, Run waited a fixed 3 s
	// after cancelling such a job.
	if took := time.Since(t0); took > 300*time.Millisecond+2*time.Second {
		t.Errorf("Run returned %s after the stop with a 300ms Timeout", took)
	}
	select {
	case <-returned:
		t.Fatal("the job returned before Run did; the test did not exercise a job that ignores cancellation")
	default:
	}
	if got := b.rdb.LLen(b.ctx, "queue:q").Val(); got != 1 {
		t.Errorf("queue:q holds %d jobs after the hard stop, want the running one pushed back", got)
	}
	if logs.FilterMessage("some jobs ignored cancellation; exiting without them").Len() != 1 {
		t.Errorf("no warning that a job ignored cancellation; logs: %v", logs.All())
	}
}

func TestHardStopReserve(t *testing.T) {
	for _, c := range []struct{ timeout, want time.Duration }{
		{300 * time.Millisecond, 75 * time.Millisecond},
		{5 * time.Second, 1250 * time.Millisecond},
		{25 * time.Second, 3 * time.Second},
		{time.Hour, 3 * time.Second},
	} {
		if got := hardStopReserve(c.timeout); got != c.want {
			t.Errorf("hardStopReserve(%s) = %s, want %s", c.timeout, got, c.want)
		}
	}
}

func TestRuntimeRecoversDeadProcess(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	ctx := testenv.Context(t)
	deadID := "crashed:999:0123456789ab"
	job := `{"class":"Echo","args":[42],"jid":"0123456789abcdef01234567","queue":"q","retry":true}`
	rdb.LPush(ctx, "ferry:inflight|"+deadID+"|q", job)
	rdb.HSet(ctx, "ferry:fetchers", deadID, `["q"]`)
	ran := make(chan int, 1)
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(_ context.Context, j *Job[echoArgs]) error { ran <- j.Args.N; return nil }))
	})
	startRuntime(t, rdb, Config{Registry: reg, RecoveryInterval: 200 * time.Millisecond, RecoveryGrace: 300 * time.Millisecond})
	select {
	case n := <-ran:
		if n != 42 {
			t.Errorf("ran job %d", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("orphaned job was not recovered")
	}
	testenv.Eventually(t, 5*time.Second, "dead process cleaned up", func() bool {
		return rdb.Exists(ctx, "ferry:inflight|"+deadID+"|q").Val() == 0 && !rdb.HExists(ctx, "ferry:fetchers", deadID).Val()
	})
}

func TestRuntimeScheduled(t *testing.T) {
	t.Parallel()
	ran := make(chan time.Time, 1)
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error { ran <- time.Now(); return nil }))
	})
	b := startRuntime(t, nil, Config{Registry: reg})
	at := time.Now().Add(700 * time.Millisecond)
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{At: at})
	select {
	case got := <-ran:
		if got.Before(at) {
			t.Errorf("ran %s before it was due", at.Sub(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("scheduled job never ran")
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Registry: NewRegistry()}, "Config.Redis is required"},
		{Config{Redis: rdb}, "Config.Registry is required"},
		{Config{Redis: rdb, Registry: NewRegistry(), Concurrency: -1}, "Concurrency must be between 1 and 1000"},
		{Config{Redis: rdb, Registry: NewRegistry(), Timeout: new(-time.Second)}, "Timeout must be positive"},
		{Config{Redis: rdb, Registry: NewRegistry(), Timeout: new(time.Duration(0))}, "Timeout must be positive"},
		{Config{Redis: rdb, Registry: NewRegistry(), MaxRetries: new(-1)}, "MaxRetries must be >= 0"},
		{Config{Redis: rdb, Registry: NewRegistry(), HeartbeatInterval: 10 * time.Second, AliveTTL: 15 * time.Second}, "AliveTTL (15s) must be at least 4 times"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	rt, err := New(Config{Redis: rdb, Registry: NewRegistry(), HeartbeatInterval: 10 * time.Second})
	if err != nil || rt.cfg.AliveTTL != 40*time.Second || rt.cfg.Concurrency != 10 || *rt.cfg.Timeout != 25*time.Second {
		t.Errorf("defaults: %+v, %v", rt.cfg, err)
	}
}

// proxiedRedis is the test's Redis twice: directly, and through a proxy
// the test can cut (for the runtime under test).
func proxiedRedis(t *testing.T) (direct *redis.Client, px *proxy, viaProxy *redis.Client) {
	t.Helper()
	o, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	direct = redis.NewClient(o)
	t.Cleanup(func() { _ = direct.Close() })
	px = newProxy(t, o.Addr)
	po := *o
	po.Addr = px.ln.Addr().String()
	po.MaxRetries = 1
	po.DialTimeout = 200 * time.Millisecond
	viaProxy = redis.NewClient(&po)
	t.Cleanup(func() { _ = viaProxy.Close() })
	return direct, px, viaProxy
}

// proxy is a TCP proxy to Redis that a test can cut and restore.
type proxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	conns   map[net.Conn]bool
	down    bool
	refused atomic.Int64
	wg      sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			p.refused.Add(1)
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

func TestRuntimeSurvivesRedisOutage(t *testing.T) {
	t.Parallel()
	direct, px, viaProxy := proxiedRedis(t)

	const n = 300
	var mu sync.Mutex
	seen := map[int]int{}
	var held atomic.Int64
	hold := make(chan struct{})
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(_ context.Context, j *Job[echoArgs]) error {
			if j.Args.N >= 100 && j.Args.N < 200 {
				held.Add(1)
				<-hold
			}
			mu.Lock()
			seen[j.Args.N]++
			mu.Unlock()
			return nil
		}))
	})
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	b := startRuntime(t, direct, Config{Redis: viaProxy, Registry: reg, Concurrency: 5, RecoveryInterval: 500 * time.Millisecond})
	args := make([]json.RawMessage, 200)
	for i := range args {
		args[i] = json.RawMessage(fmt.Sprintf("[%d]", i))
	}
	if _, err := b.client.PushBulk(b.ctx, "Echo", args, sidekiq.PushOptions{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "first 100 jobs done and 5 held", func() bool { return count() == 100 && held.Load() == 5 })

	px.cut()
	testenv.Eventually(t, 10*time.Second, "runtime notices the outage", func() bool { return px.refused.Load() >= 2 })
	close(hold) // the held jobs finish while Redis is unreachable: acks must wait
	for i := 200; i < n; i++ {
		b.push(t, "Echo", fmt.Sprintf("[%d]", i), sidekiq.PushOptions{})
	}
	testenv.Eventually(t, 10*time.Second, "runtime keeps retrying", func() bool { return px.refused.Load() >= 6 })
	px.restore()

	testenv.Eventually(t, 30*time.Second, "all jobs run after the outage", func() bool {
		return count() == n && direct.LLen(b.ctx, "queue:q").Val() == 0 && b.inflight("q") == 0
	})
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	if direct.ZCard(b.ctx, "retry").Val() != 0 || direct.ZCard(b.ctx, "dead").Val() != 0 || b.inflight("q") != 0 {
		t.Error("outage left failures or private entries")
	}
	if got := direct.Get(b.ctx, "stat:processed").Val(); got == "" {
		t.Error("stats not flushed after the outage")
	}
}

// While Redis is unreachable every loop retries about every heartbeat
// interval, but each failure is logged when it starts and, once Redis is
// back, that it works again: not at every retry.
func TestRuntimeOutageLoggedOnceNotPerRetry(t *testing.T) {
	t.Parallel()
	direct, px, viaProxy := proxiedRedis(t)
	core, logs := observer.New(zap.DebugLevel)
	b := startRuntime(t, direct, Config{Redis: viaProxy, Registry: registry(t), Concurrency: 2,
		RecoveryInterval: 100 * time.Millisecond, Logger: zap.New(core)})

	px.cut()
	testenv.Eventually(t, 20*time.Second, "many retries while Redis is unreachable", func() bool { return px.refused.Load() >= 40 })
	px.restore()
	testenv.Eventually(t, 20*time.Second, "the heartbeat works again", func() bool {
		return logs.FilterMessage("heartbeat works again").Len() == 1
	})
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage("heartbeat failed").Len(); n != 1 {
		t.Errorf("heartbeat failure logged %d times in an outage of under a minute, want 1", n)
	}
	again := logs.FilterMessage("heartbeat works again").All()[0]
	if f, ok := again.ContextMap()["failures"].(int64); !ok || f < 2 {
		t.Errorf("works-again line counts %v failures, want the retries (>= 2)", again.ContextMap()["failures"])
	}
	times := map[string]int{}
	for _, e := range logs.FilterLevelExact(zap.WarnLevel).All() {
		times[e.Message]++
	}
	for msg, n := range times {
		if n > 1 {
			t.Errorf("%q logged %d times in one outage", msg, n)
		}
	}
}
