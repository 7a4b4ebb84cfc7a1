package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// ferryBin is the ferry binary built once for the whole package.
var ferryBin string

// rubyDir holds the Ruby side of the interop tests.
var rubyDir string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test: cannot find the module root:", err)
		return 1
	}
	rubyDir = filepath.Join(root, "test", "ruby")
	tmp, err := os.MkdirTemp("", "ferry-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "test:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	ferryBin = filepath.Join(tmp, "ferry")
	build := exec.Command("go", "build", "-o", ferryBin, "./cmd/ferry")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "test: go build ./cmd/ferry failed: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

// moduleRoot walks up from the test's directory to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test directory")
		}
		dir = parent
	}
}

// ---------------------------------------------------------------- output

// tailBuffer keeps the last max bytes written to it (a worker under load
// logs megabytes; failures only need the end).
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	max     int
	dropped int

	// Every complete line is also checked for being a JSON object (ferry
	// logs JSON when stderr is not a terminal); the first few that are not
	// are kept.
	partial []byte
	lines   int
	badN    int
	bad     []string
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.checkLines(p)
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.dropped += over
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) checkLines(p []byte) {
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			return
		}
		line := bytes.TrimSpace(b.partial[:i])
		b.partial = b.partial[i+1:]
		if len(line) == 0 {
			continue
		}
		b.lines++
		if line[0] != '{' || !json.Valid(line) {
			b.badN++
			if len(b.bad) < 100 {
				b.bad = append(b.bad, string(line))
			}
		}
	}
}

// nonJSONLines returns how many output lines were not JSON objects, and the first few.
func (b *tailBuffer) nonJSONLines() (int, []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.badN, append([]string(nil), b.bad...)
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("[... %d bytes dropped ...]\n%s", b.dropped, b.buf)
	}
	return string(b.buf)
}

// ---------------------------------------------------------------- processes

// subproc is a subprocess (ferry, sidekiq, redis-server) in its own process
// group, killed at cleanup.
type subproc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	// logPath is the whole output, for grepping after a failure.
	logPath string
	done    chan struct{}
	err     error // Wait's result, valid after done
}

// startProc starts name with args and env in its own process group. At
// cleanup the whole group is SIGKILLed (if still running) and reaped; on
// failure its output is logged.
func startProc(t testing.TB, name string, env []string, bin string, args ...string) *subproc {
	t.Helper()
	p := &subproc{name: name, out: newTailBuffer(256 << 10), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Dir = t.TempDir()
	full, err := os.Create(filepath.Join(p.cmd.Dir, "output.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.logPath = full.Name()
	w := io.MultiWriter(p.out, full)
	p.cmd.Stdout = w
	p.cmd.Stderr = w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		_ = full.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.killGroup()
		<-p.done
		if t.Failed() {
			t.Logf("--- output of %s (pid %d, %s):\n%s", name, p.cmd.Process.Pid, p.state(), p.out.String())
		}
	})
	return p
}

// grep returns the output lines containing s (up to max).
func (p *subproc) grep(s string, max int) []string {
	data, _ := os.ReadFile(p.logPath)
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, s) && len(out) < max {
			out = append(out, l)
		}
	}
	return out
}

func (p *subproc) pid() int { return p.cmd.Process.Pid }

func (p *subproc) killGroup() { _ = syscall.Kill(-p.pid(), syscall.SIGKILL) }

func (p *subproc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

func (p *subproc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *subproc) state() string {
	if !p.exited() {
		return "running"
	}
	if p.cmd.ProcessState == nil {
		return "not started"
	}
	return p.cmd.ProcessState.String()
}

// waitExit waits for the process to exit and returns its exit code;
// it fails the test if that takes longer than timeout.
func (p *subproc) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s (pid %d) did not exit within %s", p.name, p.pid(), timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// childEnv returns the environment for a subprocess: ours, without anything
// that could point it at another test's data, plus extra.
func childEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "REDIS_URL", "DATABASE_URL", "FERRY_CONFIG", "FERRY_LOG_LEVEL", "FERRY_WEB_TOKEN",
			"REDIS_PROVIDER", "REDIS_SENTINELS", "REDIS_SENTINEL_PASSWORD":
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}

// startFerryWorker runs `ferry worker args...` against redisURL.
func startFerryWorker(t testing.TB, redisURL string, args ...string) *subproc {
	t.Helper()
	p := startProc(t, "ferry worker", childEnv("REDIS_URL="+redisURL), ferryBin, append([]string{"worker"}, args...)...)
	t.Cleanup(func() { assertJSONLogs(t, p, false) })
	return p
}

// runFerry runs a one-shot ferry command and returns stdout, stderr and the exit code.
func runFerry(t testing.TB, redisURL string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ferryBin, args...)
	cmd.Env = childEnv("REDIS_URL=" + redisURL)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("ferry %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// mustFerry runs a ferry command that must succeed and returns its trimmed stdout.
func mustFerry(t testing.TB, redisURL string, args ...string) string {
	t.Helper()
	out, errOut, code := runFerry(t, redisURL, args...)
	if code != 0 {
		t.Fatalf("ferry %q exited %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return strings.TrimSpace(out)
}

// ---------------------------------------------------------------- Ruby

var rubyCheck struct {
	once sync.Once
	err  error
	out  []byte
}

// requireRuby skips the test unless Ruby with the sidekiq gem is installed
// (CI installs Debian's ruby-sidekiq, so these tests run there).
func requireRuby(t testing.TB) {
	t.Helper()
	rubyCheck.once.Do(func() {
		rubyCheck.out, rubyCheck.err = exec.Command("ruby", "-e", `require "sidekiq"`).CombinedOutput()
	})
	if rubyCheck.err != nil {
		t.Skipf("Ruby Sidekiq is not available (`ruby -e 'require \"sidekiq\"'` failed: %v %s); install Debian's ruby-sidekiq to run the interop tests",
			rubyCheck.err, bytes.TrimSpace(rubyCheck.out))
	}
}

// runRubyWith runs test/ruby/<script> args... with the Ruby command ruby
// ("ruby" for Debian's Sidekiq 6.4, rb7 for 7.2) on redisURL and decodes the
// one JSON document it prints into out (if out is not nil).
func runRubyWith(t testing.TB, ruby, redisURL string, out any, script string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ruby, append([]string{filepath.Join(rubyDir, script)}, args...)...)
	cmd.Env = childEnv("REDIS_URL=" + redisURL)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ruby %s %q: %v\nstdout: %s\nstderr: %s", script, args, err, stdout.String(), stderr.String())
	}
	if out == nil {
		return
	}
	dec := json.NewDecoder(&stdout)
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("ruby %s %q: bad JSON output: %v\nstdout: %s\nstderr: %s", script, args, err, stdout.String(), stderr.String())
	}
}

// ---------------------------------------------------------------- Redis

// redisFor opens a client on url, closed at cleanup.
func redisFor(t testing.TB, url string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	o.PoolSize = 20
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// keysMatching returns the keys matching pattern (SCAN, so fine on a busy DB).
func keysMatching(ctx context.Context, t testing.TB, rdb *redis.Client, pattern string) []string {
	t.Helper()
	var keys []string
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("scan %s: %v", pattern, err)
	}
	return keys
}

// privateLists returns ferry's non-empty private lists (in-flight and
// poller staging). Redis deletes empty lists, so "none" means all empty.
func privateLists(ctx context.Context, t testing.TB, rdb *redis.Client) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, pat := range []string{"ferry:inflight|*", "ferry:staging|*"} {
		for _, k := range keysMatching(ctx, t, rdb, pat) {
			n, err := rdb.LLen(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				out[k] = n
			}
		}
	}
	return out
}

func llen(ctx context.Context, t testing.TB, rdb *redis.Client, key string) int64 {
	t.Helper()
	n, err := rdb.LLen(ctx, key).Result()
	if err != nil {
		t.Fatalf("LLEN %s: %v", key, err)
	}
	return n
}

func zcard(ctx context.Context, t testing.TB, rdb *redis.Client, key string) int64 {
	t.Helper()
	n, err := rdb.ZCard(ctx, key).Result()
	if err != nil {
		t.Fatalf("ZCARD %s: %v", key, err)
	}
	return n
}

func getInt(ctx context.Context, t testing.TB, rdb *redis.Client, key string) int64 {
	t.Helper()
	v, err := rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("GET %s = %q: %v", key, v, err)
	}
	return n
}

// processInfo is the "info" JSON of a Sidekiq process hash.
type processInfo struct {
	Hostname    string   `json:"hostname"`
	Pid         int      `json:"pid"`
	Tag         string   `json:"tag"`
	Concurrency int      `json:"concurrency"`
	Queues      []string `json:"queues"`
	Labels      []string `json:"labels"`
	Identity    string   `json:"identity"`
}

// waitIdentity waits until the process with pid has heartbeaten into the
// Sidekiq "processes" set and returns its identity and info.
func waitIdentity(ctx context.Context, t testing.TB, rdb *redis.Client, p *subproc) (string, processInfo) {
	t.Helper()
	var id string
	var info processInfo
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("%s (pid %d) in the processes set", p.name, p.pid()), func() bool {
		if p.exited() {
			t.Fatalf("%s exited early (%s):\n%s", p.name, p.state(), p.out.String())
		}
		members, err := rdb.SMembers(ctx, "processes").Result()
		if err != nil {
			return false
		}
		for _, m := range members {
			raw, err := rdb.HGet(ctx, m, "info").Result()
			if err != nil {
				continue
			}
			var i processInfo
			if json.Unmarshal([]byte(raw), &i) == nil && i.Pid == p.pid() {
				id, info = m, i
				return true
			}
		}
		return false
	})
	return id, info
}

// stopWorker sends TERM and requires a clean exit (code 0) within timeout.
func stopWorker(t testing.TB, p *subproc, timeout time.Duration) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, timeout); code != 0 {
		t.Fatalf("%s exited with code %d after TERM, want 0", p.name, code)
	}
}

// assertJSONLogs checks that every line a ferry process wrote was a JSON
// log entry (CONTRACT: zap, JSON when stderr is not a terminal). Every
// worker is checked at cleanup, leniently: lines from go-redis's own
// logger ("redis: ...", written while Redis is unreachable) are left to
// TestChaosRedisOutageLogsStayJSON, which checks strictly.
func assertJSONLogs(t testing.TB, p *subproc, strict bool) {
	t.Helper()
	_, bad := p.out.nonJSONLines()
	n := 0
	var shown []string
	for _, l := range bad {
		if !strict && strings.HasPrefix(l, "redis: ") {
			continue
		}
		n++
		shown = append(shown, l)
	}
	if n > 0 {
		t.Errorf("%s wrote %d log lines that are not JSON (log shippers cannot parse them), e.g.:\n%s",
			p.name, n, strings.Join(shown[:min(len(shown), 3)], "\n"))
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// jobJSON decodes a Sidekiq payload, keeping numbers exact.
func jobJSON(t testing.TB, raw string) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("payload %q is not a JSON object: %v", raw, err)
	}
	return m
}
