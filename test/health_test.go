package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// notifySocket is a unixgram socket standing in for systemd's
// NOTIFY_SOCKET; it keeps every datagram it receives.
type notifySocket struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	s := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s.conn = conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = conn.Close(); <-done })
	return s
}

func (s *notifySocket) count(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

func probe(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// `ferry worker --health-listen` under systemd (NOTIFY_SOCKET,
// WATCHDOG_USEC): READY=1 once it runs, watchdog pings, both probes 200;
// quiet (TSTP) makes it not ready but still alive; with Redis gone it stays
// alive (a restart would not help) and not ready; TERM sends STOPPING=1.
func TestWorkerHealthProbesAndSystemdNotify(t *testing.T) {
	t.Parallel()
	srv := startRedisServer(t)
	sock := listenNotify(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w := startProc(t, "ferry worker", childEnv("REDIS_URL="+srv.url(), "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=400000"),
		ferryBin, "worker", "--queues", "hq", "--health-listen", addr)
	status := func(path string) func() int {
		return func() int {
			if w.exited() {
				t.Fatalf("the worker exited: %s", w.state())
			}
			code, _ := probe(t, addr, path)
			return code
		}
	}
	testenv.Eventually(t, 20*time.Second, "READY=1 and a watchdog ping", func() bool {
		return sock.count("READY=1") == 1 && sock.count("WATCHDOG=1") > 0
	})
	for _, p := range []string{"/liveness", "/readiness", "/-/liveness", "/-/readiness"} {
		if code, body := probe(t, addr, p); code != 200 || !strings.Contains(body, `"ok"`) {
			t.Fatalf("%s: %d %s, want 200 ok", p, code, body)
		}
	}
	w.signal(t, syscall.SIGTSTP)
	testenv.Eventually(t, 10*time.Second, "not ready once quiet", func() bool { return status("/readiness")() == 503 })
	if code, body := probe(t, addr, "/readiness"); !strings.Contains(body, "quiet") {
		t.Fatalf("readiness when quiet: %d %s", code, body)
	}
	if c := status("/liveness")(); c != 200 {
		t.Fatalf("liveness when quiet: %d, want 200", c)
	}
	srv.kill()
	pings := sock.count("WATCHDOG=1")
	testenv.Eventually(t, 10*time.Second, "watchdog pings go on while Redis is gone", func() bool {
		return sock.count("WATCHDOG=1") > pings+3
	})
	if c := status("/liveness")(); c != 200 {
		t.Fatalf("liveness with Redis gone: %d, want 200 (a restart would not bring Redis back)", c)
	}
	if c := status("/readiness")(); c != 503 {
		t.Fatalf("readiness with Redis gone: %d, want 503", c)
	}
	w.signal(t, syscall.SIGTERM)
	testenv.Eventually(t, 20*time.Second, "STOPPING=1", func() bool { return sock.count("STOPPING=1") == 1 })
	w.waitExit(t, 40*time.Second)
}
