package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// The liveness tests run `ferry worker` processes (the CLI plus a test job
// class, test/testdata/liveworker) against a private redis-server and
// inject the faults of issue 11: a worker cut off from Redis by a network
// that stops forwarding, Redis at maxmemory with noeviction, and Redis
// restarted empty. Every execution is recorded outside Redis, so the tests
// see what ran where and when: no job may run on two processes at once,
// and no job may be lost (except, after an empty restart, the jobs that
// were only in Redis: that is Redis's loss).

const (
	liveQueue = "live"
	liveClass = "Ferry::Test::Record"
)

var (
	liveBuild    sync.Once
	liveBinPath  string
	liveBuildErr error
)

// liveWorkerBin builds test/testdata/liveworker once, next to ferryBin (so
// TestMain removes it).
func liveWorkerBin(t *testing.T) string {
	t.Helper()
	liveBuild.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			liveBuildErr = err
			return
		}
		liveBinPath = filepath.Join(filepath.Dir(ferryBin), "liveworker")
		cmd := exec.Command("go", "build", "-o", liveBinPath, "./test/testdata/liveworker")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			liveBuildErr = fmt.Errorf("go build ./test/testdata/liveworker: %v\n%s", err, out)
		}
	})
	if liveBuildErr != nil {
		t.Fatal(liveBuildErr)
	}
	return liveBinPath
}

// liveEnv is one test's run log (executions of Ferry::Test::Record) and
// release file (held jobs finish once it exists).
type liveEnv struct {
	runlog, release string
}

func newLiveEnv(t *testing.T) *liveEnv {
	dir := t.TempDir()
	return &liveEnv{runlog: filepath.Join(dir, "runs.log"), release: filepath.Join(dir, "release")}
}

// startWorker runs a worker process on queue live with concurrency n.
func (e *liveEnv) startWorker(t *testing.T, name, redisURL string, n int) *subproc {
	t.Helper()
	p := startProc(t, name, childEnv("REDIS_URL="+redisURL, "FERRY_TEST_RUNLOG="+e.runlog, "FERRY_TEST_RELEASE="+e.release),
		liveWorkerBin(t), "worker", "--queues", liveQueue, "--concurrency", strconv.Itoa(n), "--timeout", "10s")
	t.Cleanup(func() { assertJSONLogs(t, p, false) })
	return p
}

// releaseHeld lets every held job (ms < 0) finish.
func (e *liveEnv) releaseHeld(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(e.release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// push enqueues n Ferry::Test::Record jobs sleeping ms (< 0: held until
// released) and returns their jids.
func (e *liveEnv) push(ctx context.Context, t *testing.T, rdb *redis.Client, n, ms int) []string {
	t.Helper()
	args := make([]json.RawMessage, n)
	for i := range args {
		args[i] = json.RawMessage("[" + strconv.Itoa(ms) + "]")
	}
	jids, err := sidekiq.NewClient(rdb).PushBulk(ctx, liveClass, args, sidekiq.PushOptions{Queue: liveQueue})
	if err != nil {
		t.Fatal(err)
	}
	return jids
}

// execution is one run of a job, from the run log.
type execution struct {
	jid        string
	pid        int
	start, end time.Time // end is zero while running (or if the process died)
	ok         bool      // ran to the end (not cancelled)
}

func (x execution) String() string {
	end := "still running"
	if !x.end.IsZero() {
		end = x.end.Format("15:04:05.000")
		if !x.ok {
			end += " (cancelled)"
		}
	}
	return fmt.Sprintf("pid %d %s-%s", x.pid, x.start.Format("15:04:05.000"), end)
}

// runs parses the run log: executions by jid, in start order.
func (e *liveEnv) runs(t *testing.T) map[string][]execution {
	t.Helper()
	f, err := os.Open(e.runlog)
	if os.IsNotExist(err) {
		return map[string][]execution{}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]execution{}
	open := map[string][]int{} // jid|pid -> indexes in out[jid] not ended yet
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var event, jid string
		var pid int
		var ns int64
		var outcome string
		line := sc.Text()
		if n, _ := fmt.Sscan(line, &event, &jid, &pid, &ns, &outcome); n < 4 {
			t.Fatalf("run log line %q", line)
		}
		key := jid + "|" + strconv.Itoa(pid)
		switch event {
		case "start":
			out[jid] = append(out[jid], execution{jid: jid, pid: pid, start: time.Unix(0, ns)})
			open[key] = append(open[key], len(out[jid])-1)
		case "end":
			if len(open[key]) == 0 {
				t.Fatalf("run log: end without start: %q", line)
			}
			x := &out[jid][open[key][0]]
			open[key] = open[key][1:]
			x.end, x.ok = time.Unix(0, ns), outcome == "ok"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// done reports whether every jid has run to the end at least once.
func done(runs map[string][]execution, jids []string) bool {
	for _, jid := range jids {
		if !slices.ContainsFunc(runs[jid], func(x execution) bool { return x.ok }) {
			return false
		}
	}
	return true
}

// checkRuns fails the test if a job ran on two processes (or twice on one)
// at the same time, or if one of want never ran to the end; it returns how
// many jobs ran more than once (allowed: one whose run was cancelled by
// lost liveness runs again, after it).
func checkRuns(t *testing.T, runs map[string][]execution, want []string) (doubles int) {
	t.Helper()
	overlaps := 0
	for jid, xs := range runs {
		if len(xs) > 1 {
			doubles++
		}
		for i, a := range xs {
			for _, b := range xs[i+1:] {
				aEnd, bEnd := a.end, b.end
				if aEnd.IsZero() {
					aEnd = time.Unix(1<<40, 0)
				}
				if bEnd.IsZero() {
					bEnd = time.Unix(1<<40, 0)
				}
				if a.start.Before(bEnd) && b.start.Before(aEnd) {
					overlaps++
					if overlaps <= 5 {
						t.Errorf("job %s ran twice at the same time: %s and %s", jid, a, b)
					}
				}
			}
		}
	}
	if overlaps > 0 {
		t.Errorf("%d overlapping double runs", overlaps)
	}
	lost := 0
	for _, jid := range want {
		if !slices.ContainsFunc(runs[jid], func(x execution) bool { return x.ok }) {
			lost++
			if lost <= 5 {
				t.Errorf("job %s never ran to the end: runs %v", jid, runs[jid])
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d jobs lost", lost, len(want))
	}
	return doubles
}

// startsBy counts runs of jids started by pid.
func startsBy(runs map[string][]execution, jids []string, pid int) int {
	n := 0
	for _, jid := range jids {
		for _, x := range runs[jid] {
			if x.pid == pid {
				n++
			}
		}
	}
	return n
}

// drained reports whether queue live and every private list are empty.
func drained(ctx context.Context, t *testing.T, rdb *redis.Client) bool {
	return llen(ctx, t, rdb, "queue:"+liveQueue) == 0 && len(privateLists(ctx, t, rdb)) == 0
}

// A worker cut off from Redis by a network that stops forwarding (no
// reset, no refusal: packets just stop) while it runs 10 jobs: it cancels
// them before the other worker may recover them, so the two never run a job
// at once; the other worker keeps running new jobs meanwhile, and nothing
// is lost.
func TestLivenessNetworkCut(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	ctx := testenv.Context(t)
	rdb := redisFor(t, srv.url())
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.port))
	e := newLiveEnv(t)

	a := e.startWorker(t, "worker A (through the proxy)", "redis://"+px.addr()+"/0", 10)
	idA, _ := waitIdentity(ctx, t, rdb, a)
	held := e.push(ctx, t, rdb, 10, -1)
	testenv.Eventually(t, 20*time.Second, "worker A to run the 10 held jobs", func() bool {
		return startsBy(e.runs(t), held, a.pid()) == 10
	})
	b := e.startWorker(t, "worker B (direct)", srv.url(), 10)
	waitIdentity(ctx, t, rdb, b)

	px.blackhole()
	cut := time.Now()
	short := e.push(ctx, t, rdb, 20, 100)
	privA := "ferry:inflight|" + idA + "|" + liveQueue
	testenv.Eventually(t, 75*time.Second, "worker B to take over A's 10 jobs while A is cut off", func() bool {
		return llen(ctx, t, rdb, privA) == 0 && startsBy(e.runs(t), held, b.pid()) == 10
	})
	t.Logf("worker B took A's jobs over %s into the cut", time.Since(cut).Round(100*time.Millisecond))
	px.heal()
	e.releaseHeld(t)
	all := append(held, short...)
	testenv.Eventually(t, 45*time.Second, "every job to finish and the lists to drain", func() bool {
		return done(e.runs(t), all) && drained(ctx, t, rdb)
	})
	stopWorker(t, a, 30*time.Second)
	stopWorker(t, b, 30*time.Second)

	runs := e.runs(t)
	doubles := checkRuns(t, runs, all)
	for _, jid := range held {
		if x := runs[jid][0]; x.pid != a.pid() || x.ok {
			t.Errorf("held job %s: first run %s, want one on worker A (pid %d) cancelled by lost liveness", jid, x, a.pid())
		}
	}
	t.Logf("%d jobs ran twice, one after the other (A's cancelled runs, then B's)", doubles)
	if n := zcard(ctx, t, rdb, "retry") + zcard(ctx, t, rdb, "dead"); n != 0 {
		t.Errorf("retry/dead sets hold %d entries; cancelled runs must not be recorded as failures", n)
	}
}

// Redis at maxmemory with noeviction refuses the writes that refresh
// liveness (heartbeat and fetch alike) while reads and deletes still work:
// both workers stop and cancel their jobs rather than go on without
// liveness, and once memory is available again every job runs to the end,
// never on two workers at once.
func TestLivenessMaxmemory(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	ctx := testenv.Context(t)
	rdb := redisFor(t, srv.url())
	e := newLiveEnv(t)
	// 12 slots for 10 held jobs: idle slots keep fetching, so fetches
	// under maxmemory are exercised too (they must not refresh liveness).
	a := e.startWorker(t, "worker A", srv.url(), 6)
	b := e.startWorker(t, "worker B", srv.url(), 6)
	idA, _ := waitIdentity(ctx, t, rdb, a)
	idB, _ := waitIdentity(ctx, t, rdb, b)
	held := e.push(ctx, t, rdb, 10, -1)
	testenv.Eventually(t, 20*time.Second, "the workers to run the 10 held jobs", func() bool {
		runs := e.runs(t)
		return startsBy(runs, held, a.pid())+startsBy(runs, held, b.pid()) == 10
	})

	used, err := usedMemory(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used/2, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "ferry:test:oom", "x", time.Minute).Err(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("a write under maxmemory returned %v, want an OOM error", err)
	}
	testenv.Eventually(t, 40*time.Second, "both workers to cancel their jobs", func() bool {
		n := 0
		for _, xs := range e.runs(t) {
			if len(xs) > 0 && !xs[0].end.IsZero() && !xs[0].ok {
				n++
			}
		}
		return n == 10
	})
	// Wait for both alive keys to lapse, so that once memory is back each
	// worker sees the other missing until it refreshes again.
	testenv.Eventually(t, 40*time.Second, "both alive keys to expire", func() bool {
		return rdb.Exists(ctx, "ferry:alive|"+idA, "ferry:alive|"+idB).Val() == 0
	})
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	e.releaseHeld(t)
	testenv.Eventually(t, 60*time.Second, "every job to run to the end after memory is back", func() bool {
		return done(e.runs(t), held) && drained(ctx, t, rdb)
	})
	stopWorker(t, a, 30*time.Second)
	stopWorker(t, b, 30*time.Second)
	doubles := checkRuns(t, e.runs(t), held)
	t.Logf("%d jobs ran twice, one after the other (cancelled under maxmemory, run again after)", doubles)
	if n := zcard(ctx, t, rdb, "retry") + zcard(ctx, t, rdb, "dead"); n != 0 {
		t.Errorf("retry/dead sets hold %d entries", n)
	}
}

func usedMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}

// Redis restarted empty (no persistence) under 1-s jobs, three times:
// every alive key vanishes at once, but the workers are alive and must not
// take each other's jobs, including the ones they fetch before their next
// heartbeat. Jobs that were only in Redis are gone (Redis's loss, not
// ferry's); what is observable: no job runs twice, nobody recovers anyone,
// and every job pushed after the last restart runs exactly once.
func TestLivenessRedisRestartEmpty(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t, "--appendonly", "no")
	ctx := testenv.Context(t)
	rdb := redisFor(t, srv.url())
	e := newLiveEnv(t)
	a := e.startWorker(t, "worker A", srv.url(), 10)
	b := e.startWorker(t, "worker B", srv.url(), 10)
	idA, _ := waitIdentity(ctx, t, rdb, a)
	idB, _ := waitIdentity(ctx, t, rdb, b)
	var pushed []string
	batch := e.push(ctx, t, rdb, 80, 1000)
	for round := 1; round <= 3; round++ {
		pushed = append(pushed, batch...)
		testenv.Eventually(t, 30*time.Second, "60 jobs of the batch to start", func() bool {
			runs := e.runs(t)
			return len(slices.DeleteFunc(slices.Clone(batch), func(jid string) bool { return len(runs[jid]) == 0 })) >= 60
		})
		srv.kill()
		srv.start()
		if rdb.Exists(ctx, "queue:"+liveQueue).Val() != 0 {
			t.Fatal("redis-server kept data across the restart")
		}
		batch = e.push(ctx, t, rdb, 80, 1000)
	}
	last := batch
	pushed = append(pushed, last...)
	testenv.Eventually(t, 60*time.Second, "the jobs pushed after the last restart to run", func() bool {
		return done(e.runs(t), last) && drained(ctx, t, rdb)
	})
	testenv.Eventually(t, 15*time.Second, "both workers to heartbeat again", func() bool {
		return rdb.Exists(ctx, "ferry:alive|"+idA, "ferry:alive|"+idB).Val() == 2
	})
	stopWorker(t, a, 30*time.Second)
	stopWorker(t, b, 30*time.Second)

	runs := e.runs(t)
	if doubles := checkRuns(t, runs, last); doubles != 0 {
		t.Errorf("%d jobs ran more than once; an empty restart must not make live workers recover each other's jobs", doubles)
	}
	lost := 0
	for _, jid := range pushed {
		if !done(runs, []string{jid}) {
			lost++
		}
	}
	t.Logf("%d of %d jobs pushed before a restart never ran: they were only in Redis, which restarted empty", lost, len(pushed)-len(last))
	if n := getInt(ctx, t, rdb, "ferry:stat:recovered"); n != 0 {
		t.Errorf("%d jobs were recovered from live workers after the last restart", n)
	}
	for _, w := range []*subproc{a, b} {
		if l := w.grep("recovered jobs of dead processes", 1); len(l) > 0 {
			t.Errorf("%s recovered jobs of a live worker: %.300s", w.name, l[0])
		}
	}
}
