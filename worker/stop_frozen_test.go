package worker

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// privateRedis starts a redis-server of the test's own on a free port, so
// that the test can freeze it (SIGSTOP) without touching the shared one.
// At cleanup it is resumed and killed.
func privateRedis(t *testing.T) (url string, pid int) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH (install Debian's redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", t.TempDir(), "--save", "", "--appendonly", "no", "--daemonize", "no")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-exited
	})
	url = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1})
	defer c.Close()
	testenv.Eventually(t, 20*time.Second, "redis-server to accept commands", func() bool {
		select {
		case <-exited:
			t.Fatal("redis-server exited")
		default:
		}
		return c.Ping(context.Background()).Err() == nil
	})
	return url, cmd.Process.Pid
}

// With Redis frozen (SIGSTOP: connections stay open, nothing answers), a
// stop still returns within Timeout plus the final-bookkeeping allowance,
// and the running job is not lost: once Redis is back it is in the queue
// or in the private list, where orphan recovery finds it.
func TestRuntimeStopWithinTimeoutRedisFrozen(t *testing.T) {
	t.Parallel()
	url, pid := privateRedis(t)
	direct, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	check := redis.NewClient(direct)
	t.Cleanup(func() { _ = check.Close() })
	// The runtime's client is built as the ferry command builds it.
	c := config.Defaults()
	c.RedisURL = url
	rdb, err := c.NewRedis(10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })

	reg, started := untilCancelled(t)
	const timeout = 2 * time.Second
	// Concurrency 2: the free slot keeps the fetch loop in a blocking
	// fetch, which a frozen Redis never answers.
	b := startRuntime(t, check, Config{Redis: rdb, Registry: reg, Concurrency: 2, Timeout: new(timeout)})
	b.push(t, "Echo", `[1]`, sidekiq.PushOptions{})
	<-started
	raw := b.rdb.LIndex(b.ctx, "ferry:inflight|"+b.rt.Identity()+"|q", 0).Val()
	if raw == "" {
		t.Fatal("the running job is not in the private list")
	}

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	t0 := time.Now()
	b.rt.Stop()
	// Timeout, the allowance, and slack for a loaded machine. Before the
	// fix Run took Timeout + 15 s or more here.
	bound := timeout + 3*time.Second
	select {
	case err := <-b.done:
		close(b.done)
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		t.Logf("Run returned %s after the stop (Timeout %s)", time.Since(t0).Round(time.Millisecond), timeout)
	case <-time.After(bound):
		resume()
		t.Fatalf("Run did not return within %s of the stop with Redis frozen (Timeout %s)", bound, timeout)
	}
	resume()

	// Exactly one copy, in the queue (pushed back once Redis ran the
	// commands it had received) or in the private list (for recovery).
	var queue, private *redis.StringSliceCmd
	if _, err := check.TxPipelined(b.ctx, func(p redis.Pipeliner) error {
		queue = p.LRange(b.ctx, "queue:q", 0, -1)
		private = p.LRange(b.ctx, "ferry:inflight|"+b.rt.Identity()+"|q", 0, -1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range append(queue.Val(), private.Val()...) {
		if s == raw {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the job is %d times in queue:q %q and the private list %q, want once", n, queue.Val(), private.Val())
	}
	if len(private.Val()) > 0 {
		if ok, err := check.HExists(b.ctx, "ferry:fetchers", b.rt.Identity()).Result(); err != nil || !ok {
			t.Errorf("the private list holds a job but the process is not registered for recovery (%v, %v)", ok, err)
		}
	}
}
