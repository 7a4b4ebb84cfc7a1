package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

func newBMCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bm",
		Short: "Legacy (non-batched) background migrations: BackgroundMigrationWorker jobs",
		Long: `Legacy background migrations are Sidekiq jobs of class BackgroundMigrationWorker
in queue background_migration (or default), with args [MigrationClassName, [args...],
lease_attempts?], as Rails/GitLab apps enqueue them. ` + "`ferry worker`" + ` runs them at the
database's pace (bm.concurrency jobs of a class at once, default 1, each starting as the
previous ends; rescheduled while the database is unhealthy or while paused; GitLab's
2-minute cadence with bm.min_interval: 2m); these commands let an operator see and drain
them, e.g. before an upgrade.`,
	}
	cmd.AddCommand(bmRemainingCmd(a), bmStealCmd(a), bmPerformCmd(a), bmPendingCmd(a),
		bmFinalizeCmd(a), bmMarkCmd(a), bmPauseCmd(a), bmResumeCmd(a))
	return cmd
}

// bmQueuesFlag adds --queue: where BackgroundMigrationWorker jobs are
// looked for.
func bmQueuesFlag(cmd *cobra.Command, qs *[]string) {
	cmd.Flags().StringSliceVar(qs, "queue", nil, "only these queues (repeat or comma-separate; default "+strings.Join(legacy.DefaultQueues, ",")+")")
}

// bmQueues checks --queue and returns the queues to look in.
func bmQueues(qs []string) ([]string, error) {
	if len(qs) == 0 {
		return legacy.DefaultQueues, nil
	}
	for _, q := range qs {
		if err := sidekiq.ValidateQueueName(q); err != nil {
			return nil, Usagef("--queue: %v", err)
		}
	}
	return qs, nil
}

// bmCoordinator opens Redis and, when configured, the database; the
// coordinator looks in the default queues.
func (a *App) bmCoordinator(ctx context.Context, needDB bool) (*legacy.Coordinator, error) {
	return a.bmCoordinatorIn(ctx, needDB, nil)
}

// bmCoordinatorIn is bmCoordinator looking in queues (--queue).
func (a *App) bmCoordinatorIn(ctx context.Context, needDB bool, queues []string) (*legacy.Coordinator, error) {
	queues, err := bmQueues(queues)
	if err != nil {
		return nil, err
	}
	rdb, err := a.Redis(ctx)
	if err != nil {
		return nil, err
	}
	runner := &legacy.Runner{Registry: a.Reg.BM, Logger: a.Log}
	if needDB || a.Cfg.DatabaseURL != "" {
		pool, err := a.DB(ctx)
		if err != nil {
			return nil, err
		}
		runner.DB = pool
		if a.multiDB() {
			// Not silent: an operator with rows in ci's tracking table
			// would read "none pending" as "none anywhere".
			fmt.Fprintf(a.Err, "note: ferry bm works on database %s only (configured: %s); GitLab's legacy migrations on ci (BackgroundMigration::CiDatabaseWorker) are not run by ferry\n",
				config.DefaultDatabase, strings.Join(a.Cfg.DatabaseNames(), ", "))
		}
	}
	return &legacy.Coordinator{Redis: rdb, Runner: runner, Logger: a.Log, Queues: queues}, nil
}

// bmExit maps the error of an inline perform to an exit code: bad input
// (including a missing table or column) 2, else 1. Steals and pending
// tracking rows always exit 1: there the operation ran and a job failed.
func bmExit(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sidekiq.ErrStealFailed) || errors.Is(err, legacy.ErrTrackedJobFailed) {
		return No(err)
	}
	if legacy.IsBadInput(err) || errors.Is(err, legacy.ErrNotFound) || errors.Is(err, legacy.ErrNoDatabase) {
		return Usage(err)
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return err
	}
	return No(err)
}

// checkClassArg refuses a migration class name that can name no class:
// empty (`bm steal ""` stole nothing and exited 0), invalid UTF-8 or with control
// characters.
func checkClassArg(what, class string) error {
	switch {
	case strings.TrimSpace(class) == "":
		return Usagef("%s must not be empty", what)
	case !utf8.ValidString(class) || strings.ContainsFunc(class, unicode.IsControl):
		return Usagef("%s %q is not a class name (invalid UTF-8 or control characters)", what, class)
	}
	return nil
}

// checkKnownClass refuses, before anything is taken out of Redis, a class
// this ferry cannot perform: a steal stole its jobs only to push them all
// back (exit 1), and a finalize of a misspelt class exited 0 having done
// nothing, which reads as "finished".
func (a *App) checkKnownClass(class string) error {
	if !a.Reg.BM.Has(class) {
		return Usage(&legacy.UnknownMigrationError{Class: class, Known: a.Reg.BM.Classes()})
	}
	return nil
}

type bmRemainingRow struct {
	Class     string         `json:"class"`
	Queue     int            `json:"queue"`
	ByQueue   map[string]int `json:"by_queue,omitempty"`
	Scheduled int            `json:"scheduled"`
	Held      int            `json:"held"` // taken by a bm steal, not run yet
	Remaining int            `json:"remaining"`
	Running   int            `json:"running"`
	Retry     *int           `json:"retry,omitempty"`
	Dead      *int           `json:"dead,omitempty"`
}

// bmRemainingRows turns counts into sorted rows; without retryDead,
// classes with nothing remaining (and nothing running) are left out.
func bmRemainingRows(counts map[string]*sidekiq.JobCounts, running map[string]int, retryDead bool) ([]bmRemainingRow, int) {
	rows := make([]bmRemainingRow, 0, len(counts))
	total := 0
	for class, c := range counts {
		r := bmRemainingRow{Class: class, Queue: c.Queue, ByQueue: c.ByQueue, Scheduled: c.Scheduled, Held: c.Held, Remaining: c.Remaining(), Running: running[class]}
		if retryDead {
			r.Retry, r.Dead = &c.Retry, &c.Dead
		} else if r.Remaining == 0 && r.Running == 0 {
			continue
		}
		total += r.Remaining
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(x, y bmRemainingRow) int { return strings.Compare(x.Class, y.Class) })
	return rows, total
}

func bmRemainingCmd(a *App) *cobra.Command {
	var asJSON, retryDead bool
	var queues []string
	cmd := &cobra.Command{
		Use:   "remaining",
		Short: "Count queued + scheduled legacy migration jobs per migration class",
		Long: `Count BackgroundMigrationWorker jobs per migration class in the queues and the scheduled
set (what Gitlab::BackgroundMigration.remaining counts), and the jobs running now. The
queues are background_migration and default (GitLab 16+ routes every job to default
unless routing rules say otherwise); --queue narrows. Jobs a "ferry bm steal" has taken
but not run yet (also one killed less than 30 s ago) count as remaining too. --retry-dead
also shows the retry and dead sets (not included in "remaining").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			qs, err := bmQueues(queues)
			if err != nil {
				return err
			}
			rdb, err := a.Redis(ctx)
			if err != nil {
				return err
			}
			co := &legacy.Coordinator{Redis: rdb, Logger: a.Log, Queues: qs}
			// The retry and dead sets are read either way: they are not
			// "remaining" (as in GitLab), but an upgrade must not pass them.
			counts, err := co.Remaining(ctx, true)
			if err != nil {
				return err
			}
			failed := map[string]int{}
			for class, c := range counts {
				if c.Retry+c.Dead > 0 {
					failed[class] = c.Retry + c.Dead
				}
			}
			running, err := sidekiq.BMRunning(ctx, rdb)
			if err != nil {
				return err
			}
			for class := range running {
				if counts[class] == nil {
					counts[class] = &sidekiq.JobCounts{}
				}
			}
			rows, total := bmRemainingRows(counts, running, retryDead)
			paused, err := legacy.PauseStatus(ctx, rdb)
			if err != nil {
				return err
			}
			throttled, err := legacy.Throttled(ctx, rdb)
			if err != nil {
				return err
			}
			if asJSON {
				return a.PrintJSON(map[string]any{"queues": qs, "remaining": total, "classes": rows, "paused": paused, "throttled": throttled})
			}
			a.printBMState(paused, throttled)
			if !retryDead {
				a.printFailedBM(failed)
			}
			if len(rows) == 0 {
				fmt.Fprintf(a.Out, "no legacy background migration jobs are queued or scheduled (queues: %s)\n", strings.Join(qs, ", "))
				return nil
			}
			return a.printRemaining(rows, total, qs, retryDead)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&retryDead, "retry-dead", false, "also count the retry and dead sets")
	bmQueuesFlag(cmd, &queues)
	return cmd
}

// printFailedBM says on stderr which classes have jobs in the retry and
// dead sets, which remaining does not count, and how to run them.
func (a *App) printFailedBM(failed map[string]int) {
	classes := slices.Sorted(maps.Keys(failed))
	for _, class := range classes {
		fmt.Fprintf(a.Err, "%s: %d job(s) in the retry and dead sets, not counted as remaining: "+
			"`ferry bm remaining --retry-dead` lists them, `ferry bm steal %s --retry-dead` runs them\n", class, failed[class], class)
	}
}

// printBMState says on stderr why workers hold legacy jobs back, if they do.
func (a *App) printBMState(paused *legacy.PauseInfo, throttled *legacy.ThrottleInfo) {
	if paused != nil {
		fmt.Fprintf(a.Err, "legacy background migrations are PAUSED (by %s at %s); `ferry bm resume` resumes them\n",
			paused.By, paused.At.Format(time.RFC3339))
	}
	if throttled != nil {
		fmt.Fprintf(a.Err, "workers hold legacy migrations back: %s (last at %s)\n", throttled.Reason, throttled.At.Format(time.RFC3339))
	}
}

func (a *App) printRemaining(rows []bmRemainingRow, total int, qs []string, retryDead bool) error {
	tw := tabwriter.NewWriter(a.Out, 0, 4, 2, ' ', 0)
	head := "CLASS\tQUEUED\tSCHEDULED\tREMAINING\tRUNNING"
	if retryDead {
		head += "\tRETRY\tDEAD"
	}
	held := slices.ContainsFunc(rows, func(r bmRemainingRow) bool { return r.Held > 0 })
	if held {
		head += "\tHELD BY A STEAL"
	}
	fmt.Fprintln(tw, head)
	outside := map[string]int{} // jobs in queues other than the worker's default
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d", r.Class, r.Queue, r.Scheduled, r.Remaining, r.Running)
		if retryDead {
			fmt.Fprintf(tw, "\t%d\t%d", *r.Retry, *r.Dead)
		}
		if held {
			fmt.Fprintf(tw, "\t%d", r.Held)
		}
		fmt.Fprintln(tw)
		for q, n := range r.ByQueue {
			if q != legacy.QueueName {
				outside[q] += n
			}
		}
	}
	fmt.Fprintf(tw, "total\t\t\t%d\n", total)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.Out, "queues: %s\n", strings.Join(qs, ", "))
	for _, q := range slices.Sorted(maps.Keys(outside)) {
		fmt.Fprintf(a.Err, "%d job(s) wait in queue %s: a worker runs them only with --queues %s,%s; or `ferry bm steal CLASS --queue %s`\n",
			outside[q], q, legacy.QueueName, q, q)
	}
	return nil
}

// stealProgress shows each source's progress as the other long commands
// do (--progress: a bar with rate and ETA on a terminal, else a plain
// line every few seconds). finish(ok) ends the last one: complete only
// when ok, so a failed steal does not look complete.
func (a *App) stealProgress(class string) (func(sidekiq.StealProgress), func(ok bool)) {
	var mu sync.Mutex // jobs are performed concurrently
	var p progress
	var done int64
	end := func(ok bool) {
		if p != nil {
			p.end(done, ok, time.Now())
			p = nil
		}
	}
	finish := func(ok bool) {
		mu.Lock()
		defer mu.Unlock()
		end(ok)
	}
	return func(sp sidekiq.StealProgress) {
		mu.Lock()
		defer mu.Unlock()
		if sp.Done == 0 {
			end(true) // a new source starts: the previous one is done
			done = 0
			if sp.Total > 0 {
				p = a.newQuietProgress(fmt.Sprintf("%s from %s", class, sp.Source), "jobs", int64(sp.Total), 0, time.Now())
			}
			return
		}
		done = int64(sp.Done)
		if p != nil {
			p.update(done, time.Now())
		}
	}, finish
}

// defaultStealConcurrency performs a few jobs at once: enough to overlap
// round trips, few enough not to load a production database much more
// than its workers do.
const defaultStealConcurrency = 4

func bmStealCmd(a *App) *cobra.Command {
	var retryDead, asJSON, keepGoing bool
	var chunk, concurrency int
	var queues []string
	cmd := &cobra.Command{
		Use:   "steal CLASS",
		Short: "Take a migration class's jobs out of Sidekiq and perform them here",
		Long: `Take every BackgroundMigrationWorker job of migration CLASS out of the scheduled
set, then the queues (background_migration and default; --queue narrows), then the
retry and dead sets with --retry-dead, and perform them inline in that order (GitLab's),
--concurrency at once (Gitlab::BackgroundMigration.steal). A job is performed only by
the process that removed it, so several steals may run at once. Each set is partitioned
in one pass, so a steal takes time linear in the number of jobs.

On an error the failing job and every stolen job not yet performed are pushed back where
they came from (the queue, or their set with their original score), and the command
exits 1. With --keep-going only the failing job is put back, the others are performed,
and the command exits 1 at the end with a summary of the failures.`,
		Example: `  ferry bm steal CopyColumn
  ferry bm steal CopyColumn --concurrency 8 --keep-going
  ferry bm steal CopyColumn --queue default --retry-dead`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkClassArg("CLASS", args[0]); err != nil {
				return err
			}
			if err := a.checkKnownClass(args[0]); err != nil {
				return err
			}
			// An explicit 0 would silently mean the default of 1000.
			if err := checkIntFlags(cmd, intRange{"chunk", 1, maxInt4}, intRange{"concurrency", 1, 256}); err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			co, err := a.bmCoordinatorIn(ctx, false, queues)
			if err != nil {
				return err
			}
			progress, finish := a.stealProgress(args[0])
			res, err := co.Steal(ctx, args[0], legacy.StealOptions{RetryDead: retryDead, Progress: progress, Chunk: chunk,
				Concurrency: concurrency, KeepGoing: keepGoing})
			finish(err == nil)
			return a.printSteal(args[0], res, err, asJSON)
		},
	}
	cmd.Flags().BoolVar(&retryDead, "retry-dead", false, "also steal jobs from the retry and dead sets")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().IntVar(&chunk, "chunk", 1000, "jobs handled per Redis script call")
	cmd.Flags().IntVar(&concurrency, "concurrency", defaultStealConcurrency, "jobs performed at once")
	cmd.Flags().BoolVar(&keepGoing, "keep-going", false, "put a failing job back and perform the others; exit 1 at the end")
	bmQueuesFlag(cmd, &queues)
	return cmd
}

func (a *App) printSteal(class string, res sidekiq.StealResult, err error, asJSON bool) error {
	if asJSON {
		out := map[string]any{"class": class, "stolen": res.Stolen, "performed": res.Performed, "pushed_back": res.Returned}
		if len(res.Failed) > 0 {
			out["failed"] = res.Failed
		}
		if err != nil {
			out["error"] = err.Error()
		}
		if perr := a.PrintJSON(out); perr != nil {
			return perr
		}
	} else {
		fmt.Fprintf(a.Out, "%s: performed %s (stolen: queue %d, scheduled %d, retry %d, dead %d)",
			class, jobsCount(res.Performed, "job"), res.Stolen[sidekiq.SourceQueue], res.Stolen[sidekiq.SourceSchedule],
			res.Stolen[sidekiq.SourceRetry], res.Stolen[sidekiq.SourceDead])
		if res.Returned > 0 {
			fmt.Fprintf(a.Out, "; %d pushed back", res.Returned)
		}
		fmt.Fprintln(a.Out)
		a.printStealFailures(res.Failed)
	}
	if errors.Is(err, context.Canceled) {
		return No(fmt.Errorf("steal %s: interrupted; the jobs it took and did not run were pushed back where they came from (%d)", class, res.Returned))
	}
	if err != nil {
		return No(fmt.Errorf("steal %s: %w", class, err))
	}
	return nil
}

// interruptible is cmd's context, cancelled by INT (Ctrl-C) or TERM: a
// command that runs jobs then stops and puts back what it has not run,
// instead of dying with them taken.
func interruptible(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
}

// printStealFailures lists the failed jobs of a --keep-going steal, at
// most 20, with their errors.
func (a *App) printStealFailures(failed []sidekiq.StealFailure) {
	if len(failed) == 0 {
		return
	}
	fmt.Fprintf(a.Out, "%d job(s) failed and were put back where they came from:\n", len(failed))
	for i, f := range failed {
		if i == 20 {
			fmt.Fprintf(a.Out, "  ... and %d more (see --json)\n", len(failed)-i)
			break
		}
		fmt.Fprintf(a.Out, "  %s (%s): %s\n", f.JID, f.Source, f.Error)
	}
}

func bmPerformCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:   "perform CLASS ARGS_JSON",
		Short: "Run one legacy migration inline",
		Long: `Run migration CLASS with ARGS_JSON (a JSON array) in this process, like
Gitlab::BackgroundMigration.perform. Pending tracking rows with the same class and
arguments are marked succeeded. Exit 2 on bad input (unknown class, wrong arguments,
invalid identifiers), 1 if the migration failed.`,
		Example: `  ferry bm perform CopyColumn '["events","id","id_convert_to_bigint",1,10000]'`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := interruptible(cmd)
			defer stop()
			if err := checkClassArg("CLASS", args[0]); err != nil {
				return err
			}
			raw := json.RawMessage(args[1])
			if !utf8.Valid(raw) {
				return Usagef("ARGS_JSON is not valid UTF-8: %.60q", args[1])
			}
			var arr []json.RawMessage
			if err := json.Unmarshal(raw, &arr); err != nil {
				return Usagef("ARGS_JSON must be a JSON array, e.g. '[\"events\",\"id\",\"id_big\",1,1000]'; got %.60s", args[1])
			}
			classes := a.Reg.BM
			if !classes.Has(args[0]) {
				return Usage(&legacy.UnknownMigrationError{Class: args[0], Known: classes.Classes()})
			}
			runner := &legacy.Runner{Registry: classes, Logger: a.Log}
			if a.Cfg.DatabaseURL != "" {
				pool, err := a.DB(ctx)
				if err != nil {
					return err
				}
				runner.DB = pool
			}
			start := time.Now()
			if err := runner.Perform(ctx, args[0], raw); err != nil {
				return bmExit(fmt.Errorf("perform %s: %w", args[0], err))
			}
			fmt.Fprintf(a.Out, "%s %s: done in %s\n", args[0], raw, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
}

func bmPendingCmd(a *App) *cobra.Command {
	var perform, asJSON bool
	var class string
	var queues []string
	cmd := &cobra.Command{
		Use:   "pending",
		Short: "List (and with --perform run) pending rows of background_migration_jobs",
		Long: `List the rows of the tracking table background_migration_jobs that are still pending
(status 0), with their count and, per class, how many of its jobs Sidekiq still holds
(queues background_migration and default, --queue narrows; and the scheduled set).
Pre-upgrade checks fail while any remain. Rows of classes this ferry does not have are
shown apart: run them elsewhere, then ` + "`ferry bm mark`" + ` them. --perform runs each row
of a class ferry has inline, oldest first, and marks it succeeded; it stops and exits 1
at the first failure.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := interruptible(cmd)
			defer stop()
			if cmd.Flags().Changed("class") {
				if err := checkClassArg("--class", class); err != nil {
					return err
				}
			}
			co, err := a.bmCoordinatorIn(ctx, true, queues)
			if err != nil {
				return err
			}
			if perform {
				return a.performPending(ctx, co, class)
			}
			jobs, err := legacy.PendingJobs(ctx, co.Runner.DB, class)
			if err != nil {
				return err
			}
			if asJSON {
				return a.PrintJSON(a.pendingJSON(jobs))
			}
			if len(jobs) == 0 {
				fmt.Fprintln(a.Out, "no pending background migration jobs")
				return nil
			}
			counts, err := co.Remaining(ctx, false)
			if err != nil {
				return err
			}
			return a.printPending(jobs, counts, co.Queues)
		},
	}
	cmd.Flags().BoolVar(&perform, "perform", false, "perform each pending job inline")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&class, "class", "", "only this migration class")
	bmQueuesFlag(cmd, &queues)
	return cmd
}

// pendingRow is a tracking row as `bm pending --json` prints it: the
// table's columns plus whether this ferry has the class (when it does not,
// the row is run elsewhere and closed with `bm mark`).
type pendingRow struct {
	legacy.TrackedJob
	ClassKnown bool `json:"class_known"`
}

func (a *App) pendingJSON(jobs []legacy.TrackedJob) []pendingRow {
	rows := make([]pendingRow, 0, len(jobs))
	for _, j := range jobs {
		rows = append(rows, pendingRow{TrackedJob: j, ClassKnown: a.Reg.BM.Has(j.Class)})
	}
	return rows
}

// jobsCount is "1 job", "2 jobs": operators read these lines aloud.
func jobsCount(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func (a *App) performPending(ctx context.Context, co *legacy.Coordinator, class string) error {
	var p progress
	n, err := co.PerformPending(ctx, class, func(j legacy.TrackedJob, done, total int) {
		a.Log.Info("performed pending migration", zap.Int64("id", j.ID), zap.String("class", j.Class),
			zap.String("arguments", string(j.Arguments)))
		if p == nil && done == 1 {
			p = a.newQuietProgress("pending background migration jobs", "jobs", int64(total), 0, time.Now())
		}
		if p != nil {
			p.update(int64(done), time.Now())
		}
	})
	if p != nil {
		p.end(int64(n), err == nil, time.Now())
	}
	fmt.Fprintf(a.Out, "performed %s\n", jobsCount(n, "pending job"))
	var unknown *legacy.UnknownClassesError
	if errors.As(err, &unknown) {
		fmt.Fprintf(a.Err, "%s\n", unknown)
		return No(errSilent)
	}
	return bmExit(err)
}

// printPending lists pending rows of the classes ferry has, then those of
// classes it does not have, each with what Sidekiq still holds of it.
func (a *App) printPending(jobs []legacy.TrackedJob, counts map[string]*sidekiq.JobCounts, queues []string) error {
	known, unknown := legacy.SplitKnown(jobs, a.Reg.BM)
	fmt.Fprintf(a.Out, "%d pending tracking rows", len(jobs))
	if len(unknown) > 0 {
		fmt.Fprintf(a.Out, ", %d of classes this ferry does not have", len(unknown))
	}
	fmt.Fprintln(a.Out)
	for _, part := range []struct {
		title string
		jobs  []legacy.TrackedJob
	}{
		{"", known},
		{"\nclasses this ferry does not have (run them elsewhere, then `ferry bm mark ID|CLASS --yes`, or `--skip`):", unknown},
	} {
		if len(part.jobs) == 0 {
			continue
		}
		if part.title != "" {
			fmt.Fprintln(a.Out, part.title)
		}
		tw := tabwriter.NewWriter(a.Out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCLASS\tARGUMENTS\tCREATED")
		for _, j := range part.jobs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", j.ID, j.Class, j.Arguments, j.CreatedAt.Format(time.RFC3339))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	classes := map[string]bool{}
	for _, j := range jobs {
		classes[j.Class] = true
	}
	fmt.Fprintf(a.Out, "\njobs Sidekiq still holds (queues %s and the scheduled set):\n", strings.Join(queues, ", "))
	for _, c := range slices.Sorted(maps.Keys(classes)) {
		n := 0
		if counts[c] != nil {
			n = counts[c].Remaining()
		}
		fmt.Fprintf(a.Out, "  %s: %d\n", c, n)
	}
	return nil
}

func bmFinalizeCmd(a *App) *cobra.Command {
	var retryDead, deleteSucceeded, asJSON bool
	var queues []string
	var concurrency int
	cmd := &cobra.Command{
		Use:   "finalize CLASS",
		Short: "Finish a legacy migration now: steal, perform pending rows, steal again",
		Long: `Finish migration CLASS synchronously, as GitLab's finalize_background_migration:
steal its queued and scheduled jobs, perform its pending tracking rows, then steal again
(jobs scheduled meanwhile). --delete-succeeded then deletes its succeeded tracking rows.
Exits 1 (after pushing unfinished jobs back) if a job fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := interruptible(cmd)
			defer stop()
			if err := checkClassArg("CLASS", args[0]); err != nil {
				return err
			}
			if err := a.checkKnownClass(args[0]); err != nil {
				return err
			}
			if err := checkIntFlags(cmd, intRange{"concurrency", 1, 256}); err != nil {
				return err
			}
			co, err := a.bmCoordinatorIn(ctx, false, queues)
			if err != nil {
				return err
			}
			progress, finish := a.stealProgress(args[0])
			res, err := co.Finalize(ctx, args[0], legacy.StealOptions{RetryDead: retryDead, Progress: progress, Concurrency: concurrency}, deleteSucceeded)
			finish(err == nil)
			if asJSON {
				out := map[string]any{"class": args[0], "stolen": res.Stolen, "pending_performed": res.PendingPerformed,
					"stolen_again": res.StolenAgain, "deleted_tracking_rows": res.DeletedTracking}
				if err != nil {
					out["error"] = err.Error()
				}
				if perr := a.PrintJSON(out); perr != nil {
					return perr
				}
			} else {
				fmt.Fprintf(a.Out, "%s: performed %d stolen jobs, %d pending tracked jobs, then %d more stolen jobs",
					args[0], res.Stolen, res.PendingPerformed, res.StolenAgain)
				if deleteSucceeded {
					fmt.Fprintf(a.Out, "; deleted %d succeeded tracking rows", res.DeletedTracking)
				}
				fmt.Fprintln(a.Out)
			}
			if err != nil {
				return bmExit(fmt.Errorf("finalize %s: %w", args[0], err))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&retryDead, "retry-dead", false, "also steal jobs from the retry and dead sets")
	cmd.Flags().BoolVar(&deleteSucceeded, "delete-succeeded", false, "delete the class's succeeded tracking rows at the end")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().IntVar(&concurrency, "concurrency", defaultStealConcurrency, "stolen jobs performed at once")
	bmQueuesFlag(cmd, &queues)
	return cmd
}

func bmMarkCmd(a *App) *cobra.Command {
	var yes, skip bool
	cmd := &cobra.Command{
		Use:   "mark ID|CLASS --yes",
		Short: "Mark pending tracking rows done by hand (after running them elsewhere), or --skip them",
		Long: `Close pending rows of background_migration_jobs without running them here: the row with
that ID, or every pending row of migration CLASS. Use it for classes this ferry does
not have (` + "`ferry bm pending`" + ` lists them apart) once the work was done elsewhere, or
with --skip when it is not needed. The rows get status succeeded, so upgrade checks
pass; who and when are recorded (columns ferry_marked, ferry_marked_by,
ferry_marked_at). Without --yes it only says how many rows it would mark.`,
		Example: `  ferry bm mark PopulateThings --yes
  ferry bm mark 42 --yes --skip`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			target, err := bmMarkTarget(args[0])
			if err != nil {
				return err
			}
			how := legacy.MarkedSucceeded
			if skip {
				how = legacy.MarkedSkipped
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			// The record's columns come with ferry's schema (v5).
			if err := ferryschema.Ensure(ctx, pool, a.Log); err != nil {
				return err
			}
			by := bmOperator()
			n, err := legacy.Mark(ctx, pool, target, how, by, !yes)
			if err != nil {
				return err
			}
			if !yes {
				return Usagef("refusing without --yes: would mark %d pending tracking row(s) of %s %s", n, args[0], how)
			}
			if n == 0 {
				return No(fmt.Errorf("no pending tracking row matches %s", args[0]))
			}
			a.Log.Info("legacy tracking rows marked", zap.String("target", args[0]), zap.String("how", string(how)),
				zap.Int64("rows", n), zap.String("by", by))
			fmt.Fprintf(a.Out, "marked %d pending tracking row(s) of %s %s (by %s at %s)\n", n, args[0], how, by,
				time.Now().UTC().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "really mark them")
	cmd.Flags().BoolVar(&skip, "skip", false, "record them as skipped (not needed) instead of done elsewhere")
	return cmd
}

// bmMarkTarget reads ID|CLASS: digits are a row id, anything else a class.
func bmMarkTarget(s string) (legacy.MarkTarget, error) {
	if id, err := strconv.ParseInt(s, 10, 64); err == nil {
		if id <= 0 {
			return legacy.MarkTarget{}, Usagef("ID must be positive, got %d", id)
		}
		return legacy.MarkTarget{ID: id}, nil
	}
	if err := checkClassArg("CLASS", s); err != nil {
		return legacy.MarkTarget{}, err
	}
	return legacy.MarkTarget{Class: s}, nil
}

func bmPauseCmd(a *App) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "Pause all legacy migrations: workers reschedule their jobs instead of running them",
		Long: `Pause every BackgroundMigrationWorker job cluster-wide (GitLab's ops flag
execute_background_migrations turned off). Workers push each job back by 4 hours
instead of running it; nothing is dropped. steal/perform/finalize are not affected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, err := a.Redis(cmd.Context())
			if err != nil {
				return err
			}
			info := legacy.PauseInfo{By: bmOperator(), At: time.Now().UTC(), Reason: reason}
			if err := legacy.Pause(cmd.Context(), rdb, info); err != nil {
				return err
			}
			a.Log.Info("legacy background migrations paused", zap.String("by", info.By), zap.String("reason", reason))
			fmt.Fprintln(a.Out, "legacy background migrations paused")
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the switch)")
	return cmd
}

func bmResumeCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:   "resume",
		Short: "Resume legacy migrations paused with `ferry bm pause`",
		Long: `Resume legacy migrations. Jobs rescheduled while paused run at their new time (up
to 4 hours later); ` + "`ferry bm steal CLASS`" + ` runs them now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, err := a.Redis(cmd.Context())
			if err != nil {
				return err
			}
			was, err := legacy.Resume(cmd.Context(), rdb)
			if err != nil {
				return err
			}
			if !was {
				fmt.Fprintln(a.Out, "legacy background migrations were not paused")
				return nil
			}
			a.Log.Info("legacy background migrations resumed", zap.String("by", bmOperator()))
			fmt.Fprintln(a.Out, "legacy background migrations resumed")
			return nil
		},
	}
}

// bmOperator names who ran a command, for audit fields.
func bmOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return name + "@" + config.Hostname()
}
