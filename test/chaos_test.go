package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

const (
	chaosQueue   = "chaos"
	chaosMissing = "Chaos::Missing" // no worker: each run leaves one retry entry, so runs are observable
)

// chaosLoad pushes rounds×(batch Ferry::Noop + batch Chaos::Missing) jobs,
// interleaved, to queue chaos, and returns the jids of the failing ones.
// A Chaos::Missing job that ran leaves a retry entry with its jid (the
// workers poll the retry set only every hour, so it stays there).
func chaosLoad(ctx context.Context, t *testing.T, rdb *redis.Client, rounds, batch int) map[string]bool {
	t.Helper()
	c := sidekiq.NewClient(rdb)
	failing := map[string]bool{}
	n := 0
	for range rounds {
		for _, class := range []string{"Ferry::Noop", chaosMissing} {
			args := make([]json.RawMessage, batch)
			for i := range args {
				args[i] = json.RawMessage("[" + strconv.Itoa(n) + "]")
				n++
			}
			jids, err := c.PushBulk(ctx, class, args, sidekiq.PushOptions{Queue: chaosQueue})
			if err != nil {
				t.Fatal(err)
			}
			if class == chaosMissing {
				for _, j := range jids {
					failing[j] = true
				}
			}
		}
	}
	return failing
}

// assertEveryFailingJobRanOnce checks that the retry set holds exactly one
// entry per Chaos::Missing job (each ran exactly once: a failure is
// recorded atomically with its removal from the private list) and nothing
// else, and that the dead set is empty.
func assertEveryFailingJobRanOnce(ctx context.Context, t *testing.T, rdb *redis.Client, failing map[string]bool, workers ...*subproc) {
	t.Helper()
	members, err := rdb.ZRange(ctx, "retry", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range members {
		var j struct {
			JID   string `json:"jid"`
			Class string `json:"class"`
		}
		if err := json.Unmarshal([]byte(m), &j); err != nil {
			t.Fatalf("retry entry %q: %v", m, err)
		}
		if j.Class != chaosMissing || !failing[j.JID] {
			t.Errorf("unexpected retry entry %.300s", m)
		}
		seen[j.JID]++
	}
	var missing, dup int
	for jid := range failing {
		switch seen[jid] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d %s jobs never ran (no retry entry): jobs were lost", missing, len(failing), chaosMissing)
		shown := 0
		for jid := range failing {
			if seen[jid] > 0 || shown == 3 {
				continue
			}
			shown++
			t.Logf("lost job %s: in keys %v", jid, keysHolding(ctx, t, rdb, jid))
			for _, w := range workers {
				for _, l := range w.grep(jid, 5) {
					t.Logf("  %s (pid %d) logged: %.400s", w.name, w.pid(), l)
				}
			}
		}
	}
	if dup > 0 {
		t.Errorf("%d %s jobs have more than one retry entry", dup, chaosMissing)
	}
	if n := zcard(ctx, t, rdb, "dead"); n != 0 {
		sample, _ := rdb.ZRange(ctx, "dead", 0, 2).Result()
		t.Errorf("dead set has %d entries, want 0; e.g. %.500q", n, sample)
	}
}

// keysHolding lists the keys whose list or sorted-set members mention s.
func keysHolding(ctx context.Context, t *testing.T, rdb *redis.Client, s string) []string {
	var out []string
	for _, k := range keysMatching(ctx, t, rdb, "*") {
		var members []string
		switch rdb.Type(ctx, k).Val() {
		case "list":
			members = rdb.LRange(ctx, k, 0, -1).Val()
		case "zset":
			members = rdb.ZRange(ctx, k, 0, -1).Val()
		case "hash":
			for _, v := range rdb.HGetAll(ctx, k).Val() {
				members = append(members, v)
			}
		}
		for _, m := range members {
			if strings.Contains(m, s) {
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// waitProgress waits (polling every millisecond) until at least done jobs
// have left queue chaos, and returns how many are left.
func waitProgress(ctx context.Context, t *testing.T, rdb *redis.Client, w *subproc, total, done int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := llen(ctx, t, rdb, "queue:"+chaosQueue)
		if total-left >= done {
			return left
		}
		if w.exited() {
			t.Fatalf("%s exited under load (%s)", w.name, w.state())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress: %d of %d jobs still queued after 30 s", left, total)
		}
		time.Sleep(time.Millisecond)
	}
}

// A worker SIGKILLed under load loses nothing: another worker pushes the
// jobs left in the dead worker's private list back once its liveness key
// expires, and every job runs.
func TestChaosSigkillWorkerUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	failing := chaosLoad(ctx, t, rdb, 10, 1000)
	const total = 20000

	args := []string{"--queues", chaosQueue, "--concurrency", "50", "--poll-interval", "1h", "--timeout", "10s"}
	a := startFerryWorker(t, url, args...)
	idA, _ := waitIdentity(ctx, t, rdb, a)
	left := waitProgress(ctx, t, rdb, a, total, 1000)
	a.killGroup()
	a.waitExit(t, 10*time.Second)
	killedAt := time.Now()
	privA := "ferry:inflight|" + idA + "|" + chaosQueue
	stranded := llen(ctx, t, rdb, privA)
	t.Logf("SIGKILLed worker A with ~%d jobs queued; its private list holds %d jobs", left, stranded)
	if stranded == 0 {
		t.Logf("worker A happened to have nothing in flight; still checking that no job is lost")
	}
	// No-op jobs from a deep queue are fetched ahead of free slots (up to 16
	// × concurrency), and those too are in the private list, so recovery
	// brings them back; never more than that.
	if stranded > 17*50 {
		t.Errorf("worker A's private list held %d jobs, more than 17 × its concurrency (50)", stranded)
	}

	b := startFerryWorker(t, url, args...)
	waitIdentity(ctx, t, rdb, b)
	// Recovery needs A's 20 s liveness key to expire and then stay missing
	// for the 10 s grace (passes run every 5-15 s); allow for a recovery
	// lock A may have died holding.
	testenv.Eventually(t, 100*time.Second, "worker B to recover A's private list and drain the queue", func() bool {
		if b.exited() {
			t.Fatalf("worker B exited (%s)", b.state())
		}
		return llen(ctx, t, rdb, privA) == 0 && llen(ctx, t, rdb, "queue:"+chaosQueue) == 0 &&
			len(privateLists(ctx, t, rdb)) == 0 && zcard(ctx, t, rdb, "retry") >= int64(len(failing))
	})
	t.Logf("A's jobs were recovered %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))
	stopWorker(t, b, 30*time.Second)

	if pl := privateLists(ctx, t, rdb); len(pl) != 0 {
		t.Errorf("private lists left: %v", pl)
	}
	if ok, _ := rdb.HExists(ctx, "ferry:fetchers", idA).Result(); ok {
		t.Errorf("dead worker %s is still registered in ferry:fetchers after recovery", idA)
	}
	assertEveryFailingJobRanOnce(ctx, t, rdb, failing, a, b)
}

// TERM under load: the worker exits 0 within its timeout, leaves no private
// list, registration or process entry behind, and every job is either run
// (counted in stat:processed, flushed at exit) or still queued — exactly.
func TestChaosTermUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	const total = 20000
	args := make([]json.RawMessage, total)
	for i := range args {
		args[i] = json.RawMessage("[" + strconv.Itoa(i) + "]")
	}
	if _, err := sidekiq.NewClient(rdb).PushBulk(ctx, "Ferry::Noop", args, sidekiq.PushOptions{Queue: chaosQueue}); err != nil {
		t.Fatal(err)
	}

	flags := []string{"--queues", chaosQueue, "--concurrency", "50", "--timeout", "5s"}
	w := startFerryWorker(t, url, flags...)
	id, _ := waitIdentity(ctx, t, rdb, w)
	waitProgress(ctx, t, rdb, w, total, 500)
	start := time.Now()
	stopWorker(t, w, 15*time.Second)
	t.Logf("worker stopped %s after TERM", time.Since(start).Round(time.Millisecond))

	if pl := privateLists(ctx, t, rdb); len(pl) != 0 {
		t.Errorf("private lists left after TERM: %v", pl)
	}
	if ok, _ := rdb.SIsMember(ctx, "processes", id).Result(); ok {
		t.Errorf("%s still in the processes set after TERM", id)
	}
	if ok, _ := rdb.HExists(ctx, "ferry:fetchers", id).Result(); ok {
		t.Errorf("%s still registered in ferry:fetchers after a clean stop", id)
	}
	left := llen(ctx, t, rdb, "queue:"+chaosQueue)
	processed := getInt(ctx, t, rdb, "stat:processed")
	if left+processed != total {
		t.Errorf("after TERM: %d queued + %d processed = %d, want exactly %d", left, processed, left+processed, total)
	}
	t.Logf("first worker ran %d jobs, %d left", processed, left)

	w2 := startFerryWorker(t, url, flags...)
	testenv.Eventually(t, 30*time.Second, "a second worker to drain the rest", func() bool {
		return llen(ctx, t, rdb, "queue:"+chaosQueue) == 0 && len(privateLists(ctx, t, rdb)) == 0
	})
	stopWorker(t, w2, 15*time.Second)
	if got := getInt(ctx, t, rdb, "stat:processed"); got != total {
		t.Errorf("stat:processed = %d after both workers, want exactly %d", got, total)
	}
	if zcard(ctx, t, rdb, "retry")+zcard(ctx, t, rdb, "dead") != 0 {
		t.Errorf("retry/dead sets not empty")
	}
}

// redisServer is a private redis-server for tests that kill it.
type redisServer struct {
	t     *testing.T
	port  int
	dir   string
	extra []string // redis-server options after (so overriding) the defaults
	proc  *subproc
}

func startRedisServer(t *testing.T, extra ...string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH (install Debian's redis-server)")
	}
	s := &redisServer{t: t, port: freePort(t), dir: t.TempDir(), extra: extra}
	s.start()
	return s
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// start runs redis-server with an fsync-always AOF, so that everything it
// acknowledged survives SIGKILL, and waits until it serves commands.
func (s *redisServer) start() {
	t := s.t
	t.Helper()
	s.proc = startProc(t, "redis-server", childEnv(), "redis-server", append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"}, s.extra...)...)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port), MaxRetries: -1})
	defer c.Close()
	testenv.Eventually(t, 20*time.Second, "redis-server to accept commands", func() bool {
		if s.proc.exited() {
			t.Fatalf("redis-server exited: %s\n%s", s.proc.state(), s.proc.out.String())
		}
		return c.Set(context.Background(), "ferry:test:ping", "1", time.Second).Err() == nil
	})
}

func (s *redisServer) kill() {
	s.proc.killGroup()
	s.proc.waitExit(s.t, 10*time.Second)
}

// Redis killed (SIGKILL) and restarted under load: the worker keeps
// running, reconnects, heartbeats again and every job runs exactly once.
func TestChaosRedisRestartUnderLoad(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	ctx := testenv.Context(t)
	url := srv.url()
	rdb := redisFor(t, url)
	failing := chaosLoad(ctx, t, rdb, 10, 1000)
	const total = 20000

	flags := []string{"--queues", chaosQueue, "--concurrency", "50", "--poll-interval", "1h", "--timeout", "10s"}
	w := startFerryWorker(t, url, flags...)
	id, _ := waitIdentity(ctx, t, rdb, w)
	left := waitProgress(ctx, t, rdb, w, total, 2000)
	srv.kill()
	t.Logf("killed redis-server with ~%d jobs queued", left)
	// Restart once the worker has noticed (its next Redis call fails).
	testenv.Eventually(t, 20*time.Second, "the worker to notice Redis is down", func() bool {
		return strings.Contains(w.out.String(), "connection refused")
	})
	srv.start()
	if w.exited() {
		t.Fatalf("worker exited while Redis was down (%s)", w.state())
	}
	// A fetch whose reply the crash swallowed may have left jobs in the
	// worker's private list that it does not know about; it must find and
	// push them back itself (TestChaosLostFetchReply makes that case
	// deterministic), so wait for the private lists too.
	testenv.Eventually(t, 60*time.Second, "the worker to drain the queue and its private list after Redis came back", func() bool {
		if w.exited() {
			t.Fatalf("worker exited after Redis came back (%s)", w.state())
		}
		return llen(ctx, t, rdb, "queue:"+chaosQueue) == 0 && len(privateLists(ctx, t, rdb)) == 0
	})
	testenv.Eventually(t, 15*time.Second, "the worker to heartbeat again", func() bool {
		ok, _ := rdb.SIsMember(ctx, "processes", id).Result()
		return ok && rdb.Exists(ctx, id).Val() == 1
	})
	stopWorker(t, w, 30*time.Second)
	if n, pl := llen(ctx, t, rdb, "queue:"+chaosQueue), privateLists(ctx, t, rdb); n != 0 || len(pl) != 0 {
		t.Errorf("after the worker stopped: %d jobs queued, private lists %v; want none", n, pl)
	}
	assertEveryFailingJobRanOnce(ctx, t, rdb, failing, w)
}

// While Redis is unreachable the worker keeps logging JSON only: go-redis's
// own logger (which prints "redis: <date> pool.go:...: ..." lines) must be
// routed through ferry's zap logger, or log shippers choke on the
// worker's stderr exactly when an operator needs it.
func TestChaosRedisOutageLogsStayJSON(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	ctx := testenv.Context(t)
	rdb := redisFor(t, srv.url())
	w := startFerryWorker(t, srv.url(), "--queues", chaosQueue, "--concurrency", "20")
	id, _ := waitIdentity(ctx, t, rdb, w)
	srv.kill()
	// 20 idle fetchers and the heartbeat redial at once; go-redis logs
	// "failed to dial after 5 attempts" from its pool.
	testenv.Eventually(t, 20*time.Second, "the worker to log a Redis connection failure", func() bool {
		return strings.Contains(w.out.String(), "connection refused")
	})
	// Keep Redis down a little longer (up to 5 s) so the pool's retries
	// run out and go-redis logs, if it is going to.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n, _ := w.out.nonJSONLines(); n > 0 {
			break
		}
	}
	restarted := float64(time.Now().UnixNano()) / 1e9
	srv.start()
	testenv.Eventually(t, 15*time.Second, "the worker to heartbeat again", func() bool {
		beat, err := rdb.HGet(ctx, id, "beat").Float64()
		return err == nil && beat > restarted
	})
	stopWorker(t, w, 30*time.Second)
	assertJSONLogs(t, w, true)
}

// A fetch that ran in Redis but whose reply was lost (connection cut right
// after the command was sent) leaves jobs in the worker's own private
// list. The worker never learns about them and recovery skips live
// processes, so they must not stay there while the worker keeps running:
// the queue drained, every job must eventually run.
func TestChaosLostFetchReply(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startProxy(t, o.Addr)
	failing := chaosLoad(ctx, t, rdb, 10, 1000)
	const total = 20000

	proxied := fmt.Sprintf("redis://%s/%d", proxy.addr(), o.DB)
	w := startFerryWorker(t, proxied, "--queues", chaosQueue, "--concurrency", "50", "--poll-interval", "1h", "--timeout", "10s")
	id, _ := waitIdentity(ctx, t, rdb, w)
	waitProgress(ctx, t, rdb, w, total, 2000)
	proxy.swallowThenCut(300 * time.Millisecond)

	priv := "ferry:inflight|" + id + "|" + chaosQueue
	t.Logf("right after the cut the worker's private list holds %d jobs", llen(ctx, t, rdb, priv))
	testenv.Eventually(t, 60*time.Second, "the worker to drain the queue after the cut", func() bool {
		if w.exited() {
			t.Fatalf("worker exited after the connection cut (%s)", w.state())
		}
		return llen(ctx, t, rdb, "queue:"+chaosQueue) == 0
	})
	drained := time.Now()
	t.Logf("queue drained; the worker's private list holds %d jobs", llen(ctx, t, rdb, priv))
	// Once empty is enough: jobs it pushed back (and retries coming due)
	// are fetched into the list again right after.
	deadline := time.Now().Add(30 * time.Second)
	n := llen(ctx, t, rdb, priv)
	for n > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		n = llen(ctx, t, rdb, priv)
	}
	if n > 0 {
		t.Errorf("%d jobs are stranded in the live worker's private list %s 30 s after the queue drained: "+
			"a fetch ran in Redis but its reply was lost, so the worker never ran them, and orphan recovery skips live processes. "+
			"They run only after this worker exits and another one recovers them.", n, priv)
	} else {
		t.Logf("private list empty %s after the queue drained", time.Since(drained).Round(10*time.Millisecond))
	}
	if t.Failed() {
		return
	}
	// The jobs it pushed back run too.
	testenv.Eventually(t, 30*time.Second, "the worker to run the jobs it pushed back", func() bool {
		return llen(ctx, t, rdb, "queue:"+chaosQueue) == 0 && len(privateLists(ctx, t, rdb)) == 0
	})
	stopWorker(t, w, 30*time.Second)
	assertEveryFailingJobRanOnce(ctx, t, rdb, failing, w)
}

// Redis frozen (SIGSTOP: its connections stay open, nothing answers) when
// TERM comes: the worker, its batched-migration service included, still
// exits cleanly within --timeout plus the runtime's final allowance (1 s)
// and the processes' grace (0.5 s); before, calls waiting on Redis held
// it for their read timeouts, 20 s and more.
func TestChaosTermWithRedisFrozen(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	ctx := testenv.Context(t)
	rdb := redisFor(t, srv.url())
	w := startProc(t, "ferry worker", childEnv("REDIS_URL="+srv.url(), "DATABASE_URL="+testenv.DatabaseURL(t)),
		ferryBin, "worker", "--queues", chaosQueue, "--timeout", "4s")
	t.Cleanup(func() { assertJSONLogs(t, w, false) })
	waitIdentity(ctx, t, rdb, w)
	srv.proc.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { _ = srv.proc.cmd.Process.Signal(syscall.SIGCONT) })
	stopWorker(t, w, 4*time.Second+3*time.Second)
	if !strings.Contains(w.out.String(), "worker stopped") {
		t.Fatalf("the worker exited without its stop log:\n%s", w.out.String())
	}
}
