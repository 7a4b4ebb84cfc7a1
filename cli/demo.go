package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
)

const demoTable = "ferry_demo_events"

// tryCommand is a ferry command line that works when pasted into the
// user's own shell, which may not have this process's environment (make
// demo exports the URLs only to itself): the binary as it was invoked and
// the database URL, unless the URL holds a password.
func (a *App) tryCommand(args string) string {
	bin := os.Args[0]
	if !strings.ContainsRune(bin, '/') {
		bin = "ferry" // found in $PATH
	}
	cmd := shQuote(bin) + " " + args
	dbURL := a.Cfg.DatabaseURL
	if u, err := url.Parse(dbURL); strings.Contains(dbURL, "password=") || (err == nil && u.User != nil && hasPassword(u.User)) {
		return cmd + "   (with DATABASE_URL set as for this demo)"
	}
	return "DATABASE_URL=" + shQuote(dbURL) + " " + cmd
}

func hasPassword(u *url.Userinfo) bool {
	_, ok := u.Password()
	return ok
}

// shQuote quotes s for sh when it needs it.
func shQuote(s string) string {
	const plain = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@=,"
	if s != "" && strings.Trim(s, plain) == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newDemoCmd(a *App) *cobra.Command {
	var rows, parallel, workers int
	var local bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show a batched background migration copying int to bigint on a demo table",
		Long: `Create table ` + demoTable + ` with --rows rows (generate_series), add a bigint
column, queue CopyColumnUsingBackgroundMigrationJob id -> id_convert_to_bigint
and run it to the end with a progress bar (rows/s, ETA): through the
Sidekiq worker runtime when Redis is reachable (--concurrency jobs at once),
else in-process with --concurrency goroutines as workers (or with --local).
The demo table is dropped and recreated on every run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			// The demo table's id is an integer column; parallelism is
			// bounded by the schema, concurrency as worker.concurrency.
			for _, c := range []struct {
				r intRange
				v int
			}{{intRange{"rows", 1, maxInt4}, rows}, {intRange{"parallel", 1, bbmMaxParallel}, parallel}, {intRange{"concurrency", 1, 1000}, workers}} {
				if err := checkRange(c.r, int64(c.v)); err != nil {
					return err
				}
			}
			e, err := a.bbmEngine(ctx)
			if err != nil {
				return err
			}
			pool := e.Pool()
			fmt.Fprintf(a.Out, "Creating %s with %d rows...\n", demoTable, rows)
			t0 := time.Now()
			if err := e.Forget(ctx, demoTable); err != nil {
				return err
			}
			if _, err := pool.Exec(ctx, `DROP TABLE IF EXISTS `+demoTable+`;
				CREATE TABLE `+demoTable+` (id integer PRIMARY KEY, user_id integer NOT NULL, action smallint NOT NULL);`); err != nil {
				return err
			}
			if _, err := pool.Exec(ctx, `INSERT INTO `+demoTable+` SELECT g, g % 1000, g % 7 FROM generate_series(1, $1::int) g`, rows); err != nil {
				return err
			}
			for _, q := range []string{`ALTER TABLE ` + demoTable + ` ADD COLUMN id_convert_to_bigint bigint`, `VACUUM ANALYZE ` + demoTable} {
				if _, err := pool.Exec(ctx, q); err != nil {
					return err
				}
			}
			fmt.Fprintf(a.Out, "Created in %s.\n", time.Since(t0).Round(time.Millisecond))
			res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: demoTable, Column: "id",
				Args: []byte(`[["id"],["id_convert_to_bigint"]]`), MaxParallel: parallel})
			if err != nil {
				return bbmErr(err)
			}
			m := res.Migration
			fmt.Fprintf(a.Out, "Queued: %s (default sizes: batch %d, sub-batch %d; adaptive, target %s per batch)\n",
				m.StatusLine(), m.BatchSize, m.SubBatchSize, a.Cfg.BBM.TargetBatchDuration)

			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			runErr := make(chan error, 1)
			how := fmt.Sprintf("in-process, %d goroutines as workers", workers)
			if _, rerr := a.Redis(ctx); rerr == nil && !local {
				how = fmt.Sprintf("through the worker runtime (queue %s, concurrency %d)", batched.Queue, workers)
				a.Cfg.Worker.Concurrency = workers
				a.Cfg.Worker.Queues = batched.Queue
				go func() { runErr <- a.runWorker(runCtx, nil) }()
			} else {
				go func() { runErr <- e.RunLocal(runCtx, workers, true) }()
			}
			fmt.Fprintf(a.Out, "Running %s, up to %d batches at once...\n", how, parallel)
			start := time.Now()
			bar := a.newProgress("copy id -> id_convert_to_bigint", "rows", int64(rows), 0, start)
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			var info *batched.MigrationInfo
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case err := <-runErr:
					if err != nil && !errors.Is(err, context.Canceled) {
						return err
					}
					runErr = nil
				case <-tick.C:
				}
				info, err = e.Get(ctx, m.ID)
				if err != nil {
					return err
				}
				if bar != nil {
					bar.update(info.Progress.RowsDone, time.Now())
				}
				if info.Status.Done() || info.Status == batched.Failed {
					break
				}
				if runErr == nil {
					return No(fmt.Errorf("workers stopped; migration is %s", info.Status))
				}
			}
			elapsed := time.Since(start)
			if bar != nil {
				// A failed migration: the bar stays at its real count, not 100%.
				bar.end(info.Progress.RowsDone, info.Status.Done(), time.Now())
			}
			cancel()
			if runErr != nil {
				<-runErr // let the worker push back and unregister before connections close
			}
			var bad int64
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+demoTable+` WHERE id_convert_to_bigint IS DISTINCT FROM id`).Scan(&bad); err != nil {
				return err
			}
			fmt.Fprintf(a.Out, "%s in %s: %.0f rows/s, %d batches, final batch size %d, sub-batch %d, rows not copied: %d\n",
				info.Status, elapsed.Round(time.Millisecond), float64(info.Progress.RowsDone)/elapsed.Seconds(), info.Progress.Jobs, info.BatchSize, info.SubBatchSize, bad)
			if info.Status != batched.Finished || bad != 0 {
				return No(fmt.Errorf("demo migration ended %s with %d rows not copied; see `ferry bbm show %d`", info.Status, bad, m.ID))
			}
			fmt.Fprintf(a.Out, "Try: %s\n", a.tryCommand(fmt.Sprintf("bbm show %d", m.ID)))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&rows, "rows", 3_000_000, "rows in the demo table")
	f.IntVar(&parallel, "parallel", 2, "batches of the migration that may run at once")
	f.IntVar(&workers, "concurrency", 4, "worker jobs (or goroutines) running batches")
	f.BoolVar(&local, "local", false, "run batches in-process even when Redis is reachable")
	// Info logs would interleave with the progress bar; the demo prints
	// its own story. --log-level debug still shows everything.
	a.PreValidate(cmd, func(c *config.Config) {
		if c.LogLevel == "info" {
			c.LogLevel = "warn"
		}
	})
	return cmd
}
