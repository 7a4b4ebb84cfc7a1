// Command throughput compares ferry's no-op job throughput with Ruby
// Sidekiq's on the same Redis, in one run (issue #2's benchmark).
//
// Method (sidekiq-protocol.md §6): push N jobs first with pipelined LPUSH,
// start the worker process, time from its first fetch until the queue is
// drained (LLEN polled every 10 ms), and read the worker's peak RSS from
// /proc. Both systems get the same payload shape, queue and concurrency.
//
//	go run ./bench/throughput -jobs 100000 -concurrency 10
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
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/queue"
)

func main() {
	redisURL, _ := config.TestURLs()
	var (
		jobs        = flag.Int("jobs", 100_000, "jobs to push for each system")
		concurrency = flag.Int("concurrency", 10, "worker concurrency for both")
		ferryBin    = flag.String("ferry", "bin/ferry", "ferry binary")
		url         = flag.String("redis-url", redisURL, "Redis URL (default $REDIS_URL); its last database is flushed and used")
		skipRuby    = flag.Bool("skip-ruby", false, "measure ferry only")
		runs        = flag.Int("runs", 1, "repetitions of each measurement (best run reported)")
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
	fmt.Printf("throughput: %d no-op jobs, concurrency %d, Redis %s, %d CPUs, %s\n", *jobs, *concurrency, redisVersion(ctx, rdb), runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))

	var ruby, ferry result
	_ = ferry
	if !*skipRuby {
		ruby = best(*runs, func() result {
			return measure(ctx, rdb, *jobs, "NoopJob", func() *exec.Cmd {
				dir, _ := filepath.Abs("bench/throughput")
				return exec.Command("sidekiq", "-r", filepath.Join(dir, "noop.rb"), "-c", strconv.Itoa(*concurrency), "-q", "bench", "-e", "production")
			}, benchURL)
		})
		fmt.Printf("%-30s %8.0f jobs/s  (%d jobs in %.2fs, peak RSS %d MB)\n", "ruby sidekiq 6.4:", ruby.rate, *jobs, ruby.elapsed.Seconds(), ruby.rssMB)
	}
	// ferry twice: with Go's default (all cores) and with --procs 1, one
	// core like Ruby's GVL-bound process, leaving the other core to Redis.
	for _, procs := range []string{"0", "1"} {
		ferry = best(*runs, func() result {
			return measure(ctx, rdb, *jobs, "Ferry::Noop", func() *exec.Cmd {
				return exec.Command(*ferryBin, "worker", "--concurrency", strconv.Itoa(*concurrency), "--queues", "bench",
					"--log-level", "warn", "--procs", procs)
			}, benchURL)
		})
		label := "ferry (reliable, all cores):"
		if procs == "1" {
			label = "ferry (reliable, --procs 1):"
		}
		fmt.Printf("%-30s %8.0f jobs/s  (%d jobs in %.2fs, peak RSS %d MB)\n", label, ferry.rate, *jobs, ferry.elapsed.Seconds(), ferry.rssMB)
		if !*skipRuby && ruby.rate > 0 {
			fmt.Printf("  ratio ferry/ruby: %.1fx (target >= 10x; RSS target <= 50 MB)\n", ferry.rate/ruby.rate)
		}
	}
}

type result struct {
	rate    float64
	elapsed time.Duration
	rssMB   int64
}

func best(n int, f func() result) result {
	var b result
	for range max(n, 1) {
		if r := f(); r.rate > b.rate {
			b = r
		}
	}
	return b
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
	key := queue.QueueKey("bench")
	var start time.Time
	var peak int64
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		l, err := rdb.LLen(ctx, key).Result()
		if err != nil {
			fail("llen: %v", err)
		}
		if start.IsZero() && l < int64(n) {
			start = time.Now()
		}
		peak = max(peak, rssKB(cmd.Process.Pid))
		if l == 0 {
			el := time.Since(start)
			return result{rate: float64(n) / el.Seconds(), elapsed: el, rssMB: peak / 1024}
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
			j := queue.NewJob(class, args, "bench")
			j.SetString("jid", queue.NewJID())
			j.Set("retry", json.RawMessage("1"))
			j.SetTime("created_at", now)
			j.SetTime("enqueued_at", now)
			vals = append(vals, j.Encode())
		}
		if err := rdb.LPush(ctx, queue.QueueKey("bench"), vals...).Err(); err != nil {
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
