// Command recordworker is the ferry CLI plus one job class for
// bench/failover, built by it; it is not part of ferry.
//
// Ferry::Bench::Record [seq, ms] sleeps ms milliseconds and returns early
// when its context is cancelled. Each run appends
// "start <seq> <jid> <pid> <unix ns>" and
// "end <seq> <jid> <pid> <unix ns> ok|cancelled" to $FERRY_BENCH_RUNLOG,
// outside Redis, so the benchmark sees every execution, including
// overlapping ones and ones whose acknowledgement Redis lost.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/worker"
)

type recordArgs struct{ Seq, Ms int }

func (recordArgs) Kind() string { return "Ferry::Bench::Record" }

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr, cli.Options{
		Register: func(r *cli.Registries) {
			worker.AddWorker(r.Workers, worker.WorkFunc[recordArgs](record))
		},
	}))
}

func record(ctx context.Context, j *worker.Job[recordArgs]) error {
	if err := logLine("start", j.Args.Seq, j.JID, ""); err != nil {
		return err
	}
	t := time.NewTimer(time.Duration(j.Args.Ms) * time.Millisecond)
	defer t.Stop()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
	}
	outcome := " ok"
	if err != nil {
		outcome = " cancelled"
	}
	if lerr := logLine("end", j.Args.Seq, j.JID, outcome); lerr != nil {
		return lerr
	}
	return err
}

// logLine appends one line with O_APPEND: a single short write, so lines
// of concurrent jobs and processes never interleave.
func logLine(event string, seq int, jid, suffix string) error {
	f, err := os.OpenFile(os.Getenv("FERRY_BENCH_RUNLOG"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %d %s %d %d%s\n", event, seq, jid, os.Getpid(), time.Now().UnixNano(), suffix)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
