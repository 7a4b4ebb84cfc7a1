package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

type noopArgs []json.RawMessage

func (noopArgs) Kind() string { return "Ferry::Noop" }

// BenchmarkRuntimeNoop pushes b.N no-op jobs (sidekiqload's shape), then
// times a concurrency-10 runtime draining them; it reports jobs/s. Run
// e.g. with -benchtime=100000x.
func BenchmarkRuntimeNoop(b *testing.B) {
	rdb := testenv.Redis(b)
	ctx := testenv.Context(b)
	var done atomic.Int64
	reg := NewRegistry()
	AddWorker(reg, WorkFunc[noopArgs](func(context.Context, *Job[noopArgs]) error { done.Add(1); return nil }))

	args := make([]json.RawMessage, b.N)
	for i := range args {
		args[i] = json.RawMessage(fmt.Sprintf(`["string",%d,{"mike":"bob"}]`, i))
	}
	if _, err := sidekiq.NewClient(rdb).PushBulk(ctx, "Ferry::Noop", args, sidekiq.PushOptions{Queue: "bench"}); err != nil {
		b.Fatal(err)
	}
	rt, err := New(Config{Redis: rdb, Registry: reg, Queues: []sidekiq.WeightedQueue{{Name: "bench"}}, Concurrency: 10})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	b.ReportAllocs()
	redisCPU0, goCPU0, calls0 := redisCPU(b, rdb), processCPU(), redisCalls(b, rdb)
	b.ResetTimer()
	start := time.Now()
	go func() { stopped <- rt.Run(runCtx) }()
	for done.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	goCPU, rCPU, calls := processCPU()-goCPU0, redisCPU(b, rdb)-redisCPU0, redisCalls(b, rdb)-calls0
	cancel()
	if err := <-stopped; err != nil {
		b.Fatal(err)
	}
	if n := rdb.LLen(ctx, "ferry:inflight|"+rt.Identity()+"|bench").Val(); n != 0 {
		b.Fatalf("%d jobs left in the private list", n)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
	// CPU per job is meaningful even on a busy machine, where wall time is not.
	b.ReportMetric(float64(goCPU.Microseconds())/float64(b.N), "go-cpu-µs/job")
	b.ReportMetric(rCPU*1e6/float64(b.N), "redis-cpu-µs/job")
	// Scripts per job: each fetch is one, so this is about round trips per job.
	b.ReportMetric(float64(calls)/float64(b.N), "scripts/job")
}

// redisCalls counts the scripts (EVALSHA, EVAL) Redis has run.
func redisCalls(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(info, "\r\n") {
		for _, k := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(line, k); ok {
				c, _, _ := strings.Cut(rest, ",")
				v, err := strconv.ParseInt(c, 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				n += v
			}
		}
	}
	return n
}
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the Redis server's user+system CPU seconds.
func redisCPU(b *testing.B, rdb *redis.Client) float64 {
	info := rdb.Info(context.Background(), "cpu").Val()
	total := 0.0
	for _, line := range strings.Split(info, "\r\n") {
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatal(err)
				}
				total += f
			}
		}
	}
	return total
}
