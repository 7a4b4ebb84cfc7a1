// Command failover measures what ferry's workers do when their Redis or
// PostgreSQL fails over or restarts under them (issue 13, item 3), with
// real servers on loopback, and prints the figures recorded in
// BENCHMARKS.md ("Reliability under failover").
//
//	go run ./bench/failover -ferry bin/ferry        (what `make bench` runs first)
//	go run ./bench/failover -only redis -redis-faults failover,sigkill-lag -jobs 300 -rate 20 -job-ms 2000
//	go run ./bench/failover -only redis -jobs 5000  (smaller, one part)
//
// Redis: a master, a replica and three sentinels (redis-server --sentinel)
// of its own, in a temp dir; -redis-workers worker processes (ferry's CLI
// plus the job class of ./recordworker, with REDIS_URL=redis://mymaster/0
// and REDIS_SENTINELS) run -jobs jobs pushed at -rate while the master is
// failed over with SENTINEL FAILOVER and, in a second run, SIGKILLed
// (sigkill-lag: the replica first misses -lag of the master's writes, as a
// lagging replica would). Each execution is logged to a file outside
// Redis, so jobs lost, run twice and runs that overlapped are counted from
// what really ran.
//
// PostgreSQL: a private PostgreSQL + Redis + PgBouncer (transaction mode)
// from scripts/services in a state dir under .state/; -ferry workers run a
// batched migration (CopyColumnUsingBackgroundMigrationJob) and a legacy
// BackgroundMigrationWorker CopyColumn job, one set of workers straight to
// PostgreSQL and one through PgBouncer (their own database and Redis
// database each), while PostgreSQL is stopped (-m fast, then -m immediate)
// for -down and started again. A trigger counts the writes of each row.
//
// Every wait is bounded and cancellable (Ctrl-C); every process started
// here is stopped on the way out, also on error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	only  string // "", "redis" or "pg"
	ferry string

	// Redis
	jobs, redisWorkers, concurrency, jobMs int
	rate                                   float64
	faultAt                                float64
	downAfter, redisSettle, redisTimeout   time.Duration
	lag                                    time.Duration
	redisFaults                            string
	waitReplicas                           int

	// PostgreSQL
	pgModes, pgPaths    string
	pgWorkers           int
	bbmRows, legacyRows int
	legacy              bool
	loginRetry          time.Duration
	down, pgTimeout     time.Duration
	keepState           bool
}

func main() {
	var o options
	flag.StringVar(&o.only, "only", "", "run only one part: redis or pg")
	flag.StringVar(&o.ferry, "ferry", "bin/ferry", "ferry binary for the PostgreSQL part (built with `make build`)")
	flag.IntVar(&o.jobs, "jobs", 20000, "Redis: jobs pushed during each run")
	flag.Float64Var(&o.rate, "rate", 1000, "Redis: jobs pushed per second")
	flag.IntVar(&o.redisWorkers, "redis-workers", 2, "Redis: worker processes")
	flag.IntVar(&o.concurrency, "concurrency", 10, "Redis: concurrency of each worker")
	flag.IntVar(&o.jobMs, "job-ms", 10, "Redis: each job sleeps this many milliseconds")
	flag.Float64Var(&o.faultAt, "fault-at", 0.4, "Redis: fail over once this share of the jobs is pushed")
	flag.DurationVar(&o.downAfter, "down-after", 2*time.Second, "Redis: sentinel down-after-milliseconds")
	flag.DurationVar(&o.redisSettle, "settle", 30*time.Second, "Redis: stop waiting for missing jobs after this long without a new completion")
	flag.DurationVar(&o.redisTimeout, "redis-timeout", 3*time.Minute, "Redis: bound on each run")
	flag.StringVar(&o.redisFaults, "redis-faults", "failover,sigkill", "Redis: faults to run, in order (failover: SENTINEL FAILOVER; sigkill: SIGKILL of the master;\nsigkill-lag: the replica is stopped for -lag, then the master SIGKILLed, so the replica misses writes)")
	flag.IntVar(&o.waitReplicas, "wait-replicas", 0, "Redis: the producer's pushes wait for this many replicas (redis.wait_replicas; 0: Sidekiq's behaviour)")
	flag.DurationVar(&o.lag, "lag", time.Second, "Redis, sigkill-lag: how long the replica misses the master's writes")
	flag.StringVar(&o.pgModes, "pg-modes", "fast,immediate", "PostgreSQL: pg_ctl stop modes, one restart each")
	flag.StringVar(&o.pgPaths, "pg-paths", "direct,pgbouncer", "PostgreSQL: worker sets, restarted together (direct, pgbouncer)")
	flag.IntVar(&o.pgWorkers, "pg-workers", 2, "PostgreSQL: worker processes per path")
	flag.IntVar(&o.bbmRows, "bbm-rows", 100000, "PostgreSQL: rows of the batched migration's table (a trigger sleeps 10 ms every 100 rows)")
	flag.IntVar(&o.legacyRows, "legacy-rows", 100000, "PostgreSQL: rows of the legacy CopyColumn job (one statement)")
	flag.BoolVar(&o.legacy, "legacy", true, "PostgreSQL: also run a legacy BackgroundMigrationWorker job through each restart (adds GitLab's 2-minute lease)")
	flag.DurationVar(&o.loginRetry, "pgbouncer-login-retry", 0, "PostgreSQL: set PgBouncer's server_login_retry (0: PgBouncer's default, 15 s)")
	flag.DurationVar(&o.down, "down", 5*time.Second, "PostgreSQL: how long it stays down")
	flag.DurationVar(&o.pgTimeout, "pg-timeout", 4*time.Minute, "PostgreSQL: bound on each restart's recovery")
	flag.BoolVar(&o.keepState, "keep", false, "keep temp dirs and logs (paths are printed)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		stop()
		os.Exit(1)
	}
}

func runAll(ctx context.Context, o options) error {
	if o.only != "" && o.only != "redis" && o.only != "pg" {
		return fmt.Errorf("-only: want redis or pg, not %q", o.only)
	}
	start := time.Now()
	fmt.Printf("bench/failover on %s, %d cores\n", hostInfo(), runtime.NumCPU())
	var errs []error
	if o.only == "" || o.only == "redis" {
		for _, f := range splitList(o.redisFaults) {
			r, err := redisRun(ctx, o, f)
			if err != nil {
				errs = append(errs, fmt.Errorf("redis %s: %w", f, err))
				fmt.Printf("redis %s: FAILED: %v\n", f, err)
				if ctx.Err() != nil {
					return errors.Join(errs...)
				}
				continue
			}
			r.print()
		}
	}
	if o.only == "" || o.only == "pg" {
		if err := pgRuns(ctx, o); err != nil {
			errs = append(errs, fmt.Errorf("postgresql: %w", err))
		}
	}
	fmt.Printf("bench/failover: %s in all\n", time.Since(start).Round(time.Second))
	return errors.Join(errs...)
}

// ---------------------------------------------------------------- processes

// proc is a child process with its output in a file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// startProc starts bin with args and env (added to a copy of this
// process's environment without the variables in drop), output to
// dir/<name>.log.
func startProc(dir, name string, env []string, drop []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(environ(drop), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func environ(drop []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, d := range drop {
			if k == d {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace, then SIGKILLs; it waits for the exit.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// cleanups run in reverse order, once.
type cleanups struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

func (c *cleanups) run() {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// ---------------------------------------------------------------- waits

// waitFor polls cond every interval until it returns true, an error, or
// timeout/ctx ends.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("waiting for %s: gave up after %s", what, timeout)
			}
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ---------------------------------------------------------------- misc

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func hostInfo() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	model := "unknown CPU"
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %d GiB", (kb+(1<<19))>>20)
		}
	}
	return model + mem
}
