// Command throughput compares ferry's no-op job throughput with Ruby
// Sidekiq 6.4's (Debian's ruby-sidekiq) and 7.2's (../shared/sidekiq7 beside
// the project, when it is there) on the same Redis, in one run (issues #2
// and #16).
//
// Method (sidekiq-protocol.md §6): push N jobs first with pipelined LPUSH,
// start the worker process, time from its first fetch until the queue is
// drained (LLEN polled every 10 ms), and read the worker's peak RSS from
// /proc. Every system gets the same payload shape, queue and concurrency.
// Each round runs every system once, one after the other, so that a busy
// machine slows them alike; every run is printed, then the best of each and
// the ratios. Each run also reports the CPU the worker and Redis spent per
// job (steadier than wall time on a shared machine) and how busy the
// machine was with other work meanwhile.
//
//	go run ./bench/throughput -jobs 100000 -concurrency 10 -runs 3
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// system is one worker under test.
type system struct {
	label string
	class string
	cmd   func() *exec.Cmd
	ruby  bool
	runs  []result
}

func main() {
	redisURL, _ := config.TestURLs()
	var (
		jobs        = flag.Int("jobs", 100_000, "jobs to push for each run")
		concurrency = flag.Int("concurrency", 10, "worker concurrency for all")
		ferryBin    = flag.String("ferry", "bin/ferry", "ferry binary")
		url         = flag.String("redis-url", redisURL, "Redis URL (default $REDIS_URL); its last database is flushed and used")
		skipRuby    = flag.Bool("skip-ruby", false, "measure ferry only")
		sk7         = flag.String("sidekiq7", "../shared/sidekiq7/sidekiq7", "Sidekiq 7.2 server script (skipped with a message when missing)")
		procs1      = flag.Bool("procs1", true, "also measure ferry with --procs 1")
		runs        = flag.Int("runs", 1, "rounds: each system runs once per round (best run reported, all printed)")
	)
	flag.Parse()
	if *url == "" {
		fail("set REDIS_URL or -redis-url (make bench does)")
	}
	o, err := redis.ParseURL(*url)
	if err != nil {
		fail("redis url: %v", err)
	}
	// Use the last database, which internal/testenv never hands to tests.
	ctx := context.Background()
	o.DB = lastDB(ctx, o)
	benchURL := fmt.Sprintf("redis://%s/%d", o.Addr, o.DB)
	rdb := redis.NewClient(o)
	defer rdb.Close()
	fmt.Printf("throughput: %d no-op jobs, concurrency %d, Redis %s, %d CPUs, %s, load average %s\n", *jobs, *concurrency,
		redisVersion(ctx, rdb), runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339), loadavg())

	c := strconv.Itoa(*concurrency)
	noop, _ := filepath.Abs("bench/throughput/noop.rb")
	var systems []*system
	if !*skipRuby {
		systems = append(systems, &system{label: "ruby sidekiq 6.4", class: "NoopJob", ruby: true, cmd: func() *exec.Cmd {
			return exec.Command("sidekiq", "-r", noop, "-c", c, "-q", "bench", "-e", "production")
		}})
		if _, err := os.Stat(*sk7); err == nil {
			script, _ := filepath.Abs(*sk7)
			systems = append(systems, &system{label: "ruby sidekiq 7.2", class: "NoopJob", ruby: true, cmd: func() *exec.Cmd {
				return exec.Command(script, "-r", noop, "-c", c, "-q", "bench", "-e", "production")
			}})
		} else {
			fmt.Printf("ruby sidekiq 7.2: skipped, %s is missing (it ships beside the project, not in it; -sidekiq7 PATH)\n", *sk7)
		}
	}
	// ferry with default settings (reliable fetch on, Go's thread default),
	// and with --procs 1 for comparison.
	ferryDefault := &system{label: "ferry (defaults)", class: "Ferry::Noop", cmd: func() *exec.Cmd {
		return exec.Command(*ferryBin, "worker", "--concurrency", c, "--queues", "bench", "--log-level", "warn")
	}}
	systems = append(systems, ferryDefault)
	if *procs1 {
		systems = append(systems, &system{label: "ferry (--procs 1)", class: "Ferry::Noop", cmd: func() *exec.Cmd {
			return exec.Command(*ferryBin, "worker", "--concurrency", c, "--queues", "bench", "--log-level", "warn", "--procs", "1")
		}})
	}

	for round := 1; round <= max(*runs, 1); round++ {
		for _, s := range systems {
			r := measure(ctx, rdb, *jobs, s.class, s.cmd, benchURL)
			s.runs = append(s.runs, r)
			fmt.Printf("run %d %-20s %7.0f jobs/s  (%.2fs, peak RSS %3d MB, CPU/job: worker %5.1f µs, redis %4.1f µs; machine busy %3.0f%%, others %3.0f%% of a core, load %s)\n",
				round, s.label+":", r.rate, r.elapsed.Seconds(), r.rssMB, r.workerCPU, r.redisCPU, r.busyPct, r.othersPct, r.load)
		}
	}

	fmt.Println("best of each:")
	for _, s := range systems {
		b := best(s.runs)
		fmt.Printf("  %-20s %7.0f jobs/s  (peak RSS %d MB; all runs: %s)\n", s.label+":", b.rate, b.rssMB, rates(s.runs))
	}
	for _, f := range systems {
		if f.ruby {
			continue
		}
		for _, r := range systems {
			if !r.ruby {
				continue
			}
			fb, rb := best(f.runs), best(r.runs)
			fmt.Printf("  ratio %s / %s: %.1fx best, %.1fx median (target >= 10x; RSS target <= 50 MB)\n",
				f.label, r.label, fb.rate/rb.rate, median(f.runs)/median(r.runs))
		}
	}
}

type result struct {
	rate      float64
	elapsed   time.Duration
	rssMB     int64
	workerCPU float64 // µs of user+system CPU per job, worker process
	redisCPU  float64 // µs per job, Redis server
	busyPct   float64 // machine's CPU in use during the run, % of all cores
	othersPct float64 // CPU used by neither the worker nor Redis, % of one core
	load      string
}

func best(rs []result) result {
	var b result
	for _, r := range rs {
		if r.rate > b.rate {
			b = r
		}
	}
	return b
}

func median(rs []result) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.rate
	}
	slices.Sort(xs)
	if len(xs) == 0 {
		return 0
	}
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

func rates(rs []result) string {
	var s []string
	for _, r := range rs {
		s = append(s, strconv.FormatFloat(r.rate, 'f', 0, 64))
	}
	return strings.Join(s, ", ")
}

func measure(ctx context.Context, rdb *redis.Client, n int, class string, mk func() *exec.Cmd, url string) result {
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		fail("flush: %v", err)
	}
	push(ctx, rdb, n, class)
	cmd := mk()
	cmd.Env = append(os.Environ(), "REDIS_URL="+url)
	// Ruby Sidekiq 6.4 on Debian's redis-rb prints a deprecation warning
	// per fetch; keep the report readable and show only ferry's errors.
	cmd.Stdout, cmd.Stderr = nil, nil
	if class == "Ferry::Noop" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		fail("start %s: %v", cmd.Path, err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	key := sidekiq.QueueKey("bench")
	pid := cmd.Process.Pid
	var (
		start         time.Time
		peak          int64
		cpu0, redis0  float64
		busy0, total0 float64
		load          string
	)
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		l, err := rdb.LLen(ctx, key).Result()
		if err != nil {
			fail("llen: %v", err)
		}
		if start.IsZero() && l < int64(n) {
			start = time.Now()
			cpu0, redis0 = procCPU(pid), redisCPU(ctx, rdb)
			busy0, total0 = machineCPU()
			load = loadavg()
		}
		peak = max(peak, rssKB(pid))
		if l == 0 {
			el := time.Since(start)
			cpu, rcpu := procCPU(pid)-cpu0, redisCPU(ctx, rdb)-redis0
			busy, total := machineCPU()
			busy, total = busy-busy0, total-total0
			r := result{rate: float64(n) / el.Seconds(), elapsed: el, rssMB: peak / 1024,
				workerCPU: cpu * 1e6 / float64(n), redisCPU: rcpu * 1e6 / float64(n), load: load}
			if total > 0 {
				r.busyPct = 100 * busy / total
				// busy and total are summed over all cores, in seconds.
				r.othersPct = 100 * max(0, busy-cpu-rcpu) / el.Seconds()
			}
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	fail("queue not drained within 10 minutes")
	return result{}
}

// push loads n payloads shaped like Sidekiq's load test (args ["string", i,
// {"mike":"bob"}]) in pipelined batches.
func push(ctx context.Context, rdb *redis.Client, n int, class string) {
	now := float64(time.Now().UnixNano()) / 1e9
	for start := 0; start < n; start += 10_000 {
		vals := make([]any, 0, 10_000)
		for i := start; i < min(start+10_000, n); i++ {
			args, _ := json.Marshal([]any{"string", i, map[string]string{"mike": "bob"}})
			j := sidekiq.NewJob(class, args, "bench")
			j.SetString("jid", sidekiq.NewJID())
			j.Set("retry", json.RawMessage("1"))
			j.SetTime("created_at", now)
			j.SetTime("enqueued_at", now)
			vals = append(vals, j.Encode())
		}
		if err := rdb.LPush(ctx, sidekiq.QueueKey("bench"), vals...).Err(); err != nil {
			fail("push: %v", err)
		}
	}
	rdb.SAdd(ctx, "queues", "bench")
}

func rssKB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

// procCPU is a process's user+system CPU in seconds (all its threads).
func procCPU(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may contain spaces: utime and
	// stime are the 14th and 15th fields of the whole line.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux platform Go supports.
const clockTicks = 100

// machineCPU returns the machine's busy and total CPU seconds, summed over
// cores, from /proc/stat.
func machineCPU() (busy, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i >= 8 { // guest time is already counted in user
			break
		}
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy / clockTicks, total / clockTicks
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// redisCPU is the Redis server's user+system CPU seconds.
func redisCPU(ctx context.Context, rdb *redis.Client) float64 {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, line := range strings.Split(info, "\r\n") {
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return total
}

func redisVersion(ctx context.Context, rdb *redis.Client) string {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "redis_version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "throughput: "+format+"\n", a...)
	os.Exit(1)
}

func lastDB(ctx context.Context, o *redis.Options) int {
	c := redis.NewClient(&redis.Options{Addr: o.Addr, Password: o.Password, Username: o.Username})
	defer c.Close()
	v, err := c.ConfigGet(ctx, "databases").Result()
	if err != nil {
		fail("redis: %v", err)
	}
	n, err := strconv.Atoi(v["databases"])
	if err != nil || n < 2 {
		fail("redis has too few databases (%q)", v["databases"])
	}
	return n - 1
}
