// Command liveworker is the ferry CLI plus one job class for the liveness
// tests (test/liveness_test.go), built by them; it is not part of ferry.
//
// Ferry::Test::Record [ms] sleeps ms milliseconds, or with ms < 0 until the
// file $FERRY_TEST_RELEASE exists, and returns early when its context is
// cancelled. Each run appends "start <jid> <pid> <unix ns>" and
// "end <jid> <pid> <unix ns> ok|cancelled" to $FERRY_TEST_RUNLOG, outside
// Redis, so a test sees every execution, including overlapping ones.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/worker"
)

type recordArgs struct{ Ms int }

func (recordArgs) Kind() string { return "Ferry::Test::Record" }

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr, cli.Options{
		Register: func(r *cli.Registries) {
			worker.AddWorker(r.Workers, worker.WorkFunc[recordArgs](record))
		},
	}))
}

func record(ctx context.Context, j *worker.Job[recordArgs]) error {
	if err := logLine("start", j.JID, ""); err != nil {
		return err
	}
	err := wait(ctx, j.Args.Ms)
	outcome := "ok"
	if err != nil {
		outcome = "cancelled"
	}
	if lerr := logLine("end", j.JID, " "+outcome); lerr != nil {
		return lerr
	}
	return err
}

func wait(ctx context.Context, ms int) error {
	if ms >= 0 {
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(os.Getenv("FERRY_TEST_RELEASE")); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// logLine appends one line with O_APPEND: a single short write, so lines
// of concurrent jobs and processes never interleave.
func logLine(event, jid, suffix string) error {
	f, err := os.OpenFile(os.Getenv("FERRY_TEST_RUNLOG"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s %d %d%s\n", event, jid, os.Getpid(), time.Now().UnixNano(), suffix)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
