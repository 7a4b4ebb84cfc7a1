package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/logrepeat"
	"github.com/ferrymigrate/ferry/internal/sleep"
)

// bbmErr maps engine errors to exit codes: bad input 2, the rest 1.
func bbmErr(err error) error {
	if err == nil {
		return nil
	}
	if batched.IsBadInput(err) || errors.Is(err, batched.ErrNotFound) {
		return Usage(err)
	}
	return No(err)
}

// bbmMaxRunning is the engine's bound on max-running (Engine.SetMaxRunning).
const bbmMaxRunning = 1000

// bbmMaxParallel is the engine's bound on max_parallel_batches.
const bbmMaxParallel = batched.MaxParallelBatches

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, Usagef("migration id must be a positive integer, got %q", s)
	}
	return id, nil
}

// bbmHealth is the engine's health configuration from ferry's.
func bbmHealth(a *App) batched.HealthConfig {
	impact := a.Cfg.BBM.MaxLatencyImpact
	if impact == 0 {
		impact = -1 // the engine's "no closed loop"; its 0 is the default
	}
	return batched.HealthConfig{MaxDutyUnderLoad: a.Cfg.BBM.MaxDutyUnderLoad, MaxLatencyImpact: impact, LockTimeout: a.Cfg.BBM.LockTimeout}
}

func newBBMCmd(a *App) *cobra.Command {
	root := &cobra.Command{
		Use:   "bbm",
		Short: "Batched background migrations: queue, watch, pause, retry, finalize",
		Long: `Batched background migrations (GitLab-compatible tables and runbooks).

A migration walks a table by its integer key in batches of existing rows;
each batch runs as short sub-batch statements under a statement timeout,
and its progress is committed with every statement, so retries never redo
work. Batches run in ` + "`ferry worker`" + ` processes (queue background_migration):
more workers, more batches at once, within each migration's parallelism
and the cluster-wide max-running. Batch sizes adapt to a target duration
(bbm.target_batch_duration), and migrations back off on database signals
(autovacuum, replication lag, lock waits, long transactions).

With several databases (databases: in the config file, or
DATABASE_URL_<NAME> beside DATABASE_URL, which is main), each has its own
migrations, limit and pause switch. Reads (status, list, show, check, wait)
cover all of them and name them; --db NAME (or --database) selects. A
change names its database with --db, an id written as GitLab prints it
(main_85, ci_10) or the rake task's suffix (finalize:ci[...],
status:main); without one it is refused ("Please specify the database").`,
	}
	root.AddCommand(bbmQueueCmd(a), bbmListCmd(a, "list"), bbmListCmd(a, "status"), bbmShowCmd(a),
		bbmSimpleCmd(a, "pause", "Pause an active migration (running batches finish)", (*batched.Engine).Pause),
		bbmSimpleCmd(a, "resume", "Resume a paused migration, or one whose finalize process died", (*batched.Engine).Resume),
		bbmSimpleCmd(a, "retry", "Re-run the failed batches of a failed migration and make it active", (*batched.Engine).Retry),
		bbmFinalizeCmd(a), bbmMarkFinishedCmd(a), bbmWaitCmd(a), bbmCheckCmd(a), bbmSetCmd(a),
		bbmPauseAllCmd(a, "pause-all", true), bbmPauseAllCmd(a, "resume-all", false))
	bbmDBFlags(a, root)
	return root
}

func bbmQueueCmd(a *App) *cobra.Command {
	var o batched.QueueOptions
	var minV, maxV int64
	var target, stmtTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "queue CLASS TABLE COLUMN [ARGS_JSON]",
		Short: "Queue a batched background migration",
		Long: `Queue a migration of TABLE by its integer COLUMN with class CLASS and
JSON array ARGS_JSON. The class, the argument count, the table and the
columns are checked first. Queueing the same configuration again does
nothing (with a warning). An empty table is queued as finished.`,
		Example: `  ferry bbm queue CopyColumnUsingBackgroundMigrationJob events id '[["id"],["id_convert_to_bigint"]]'
  ferry bbm queue NullifyOrphanedReferences notes id '["project_id","projects","id"]' --parallel 2`,
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Class, o.Table, o.Column = args[0], args[1], args[2]
			if len(args) == 4 {
				o.Args = json.RawMessage(args[3])
			}
			if cmd.Flags().Changed("batch-min-value") {
				o.MinValue = &minV
			}
			if cmd.Flags().Changed("batch-max-value") {
				o.MaxValue = &maxV
			}
			// The sizes and the pause are stored in integer columns; an
			// explicit 0 would silently mean the default.
			if err := checkIntFlags(cmd, intRange{"batch-size", 1, maxInt4}, intRange{"sub-batch-size", 1, maxInt4},
				intRange{"max-batch-size", 1, maxInt4}, intRange{"pause-ms", 0, maxInt4},
				intRange{"parallel", 1, bbmMaxParallel}); err != nil {
				return err
			}
			if cmd.Flags().Changed("target-batch-duration") && target == 0 {
				// Engine.Queue reads 0 as "bbm.target_batch_duration"; its
				// own check gives the range of the rest.
				return Usagef("--target-batch-duration must be between %s and %s, got 0", batched.MinTargetBatch, batched.MaxTargetBatch)
			}
			o.TargetBatch = target
			if cmd.Flags().Changed("statement-timeout") && stmtTimeout == 0 {
				// 0 would silently mean the default; say so instead.
				return Usagef("--statement-timeout must be between %s and %s, got 0", batched.MinStatementTimeout, batched.MaxStatementTimeout)
			}
			o.StatementTimeout = stmtTimeout
			if err := batched.CheckConfig(o.Class, o.Table, o.Column, o.Args); err != nil {
				return bbmErr(err)
			}
			db, err := a.bbmWriteDB("", "queue", "add --db NAME")
			if err != nil {
				return err
			}
			e, err := a.bbmEngineFor(cmd.Context(), db)
			if err != nil {
				return err
			}
			res, err := e.Queue(cmd.Context(), o)
			if err != nil {
				return bbmErr(err)
			}
			cfg, _ := json.Marshal(res.Migration.Config())
			if res.Existing {
				fmt.Fprintf(a.Err, "Batched background migration not enqueued because it already exists: %s\n", cfg)
			} else {
				fmt.Fprintf(a.Out, "Queued batched background migration %s: %s\n", a.dbRef(db, res.Migration.ID), res.Migration.StatusLine())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.BatchSize, "batch-size", 0, "rows per batch to start with; adapts to the target duration (default 1000)")
	f.IntVar(&o.SubBatchSize, "sub-batch-size", 0, "rows per statement to start with; adapts (default 100)")
	f.IntVar(&o.PauseMs, "pause-ms", 0, "sleep between sub-batches in ms (default 0: database signals pace the migration)")
	f.IntVar(&o.MaxBatchSize, "max-batch-size", 0, "upper bound for the batch size (default 2000000)")
	f.Int64Var(&minV, "batch-min-value", 0, "first value of COLUMN to migrate (default MIN(COLUMN))")
	f.Int64Var(&maxV, "batch-max-value", 0, "last value of COLUMN to migrate (default MAX(COLUMN) now)")
	f.IntVar(&o.MaxParallel, "parallel", 0, "batches of this migration that may run at once (default 1)")
	f.BoolVar(&o.AllowSameTable, "allow-same-table", false, "run even while another migration on TABLE runs")
	f.DurationVar(&target, "target-batch-duration", 0, "override bbm.target_batch_duration for this migration")
	f.DurationVar(&stmtTimeout, "statement-timeout", 0, "statement_timeout of each sub-batch statement, 100ms to 1h (default 15s); a timed-out statement is retried with fewer rows")
	f.BoolVar(&o.Paused, "paused", false, "queue it paused")
	return cmd
}

func fmtProgress(p batched.Progress) string {
	parts := []string{}
	if p.Percent != nil {
		parts = append(parts, fmt.Sprintf("%.2f%%", *p.Percent))
	} else {
		parts = append(parts, "progress unknown")
	}
	parts = append(parts, fmt.Sprintf("%d rows", p.RowsDone))
	if p.RowsPerSec > 0 {
		parts = append(parts, fmt.Sprintf("%.0f rows/s", p.RowsPerSec))
	}
	if p.ETA != nil {
		parts = append(parts, "ETA "+(time.Duration(*p.ETA)*time.Second).String())
	}
	if p.Failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed jobs", p.Failed))
	}
	if p.Estimate != nil {
		parts = append(parts, "not started, estimate: "+p.Estimate.Text())
	}
	// The engine's read model decides rate, ETA and reason, so this line,
	// `bbm show`, the web UI and /metrics agree.
	out := strings.Join(parts, ", ")
	if p.Reason != "" {
		out += "; " + p.Reason
	}
	return out
}

func bbmListCmd(a *App, name string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   name,
		Short: "List migrations: <status> | <class>,<table>,<column>,<args json> plus progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			dbs, err := a.bbmReadDBs()
			if err != nil {
				return err
			}
			all := []dbInfo{}
			var failed []error
			for _, db := range dbs {
				ms, settings, err := a.bbmList(ctx, db)
				if err != nil {
					// The other databases are still listed; the exit says
					// one could not be read.
					failed = append(failed, a.dbErr(db, err))
					if a.multiDB() && !asJSON {
						fmt.Fprintf(a.Out, "Database: %s\n\tcannot be read: %v\n", db, err)
					}
					continue
				}
				if asJSON {
					for _, m := range ms {
						all = append(all, dbInfo{Database: db, MigrationInfo: m})
					}
					continue
				}
				if a.multiDB() {
					// GitLab's status prints a header per database.
					fmt.Fprintf(a.Out, "Database: %s\n", db)
					if len(ms) == 0 {
						fmt.Fprintln(a.Out, "\tno batched background migrations")
					}
				} else if len(ms) == 0 {
					// Not on stdout, where each line is a migration.
					fmt.Fprintln(a.Err, "No batched background migrations.")
				}
				for _, m := range ms {
					fmt.Fprintf(a.Out, "%s | id %s, %s\n", m.StatusLine(), a.dbRef(db, m.ID), fmtProgress(m.Progress))
				}
				if settings.PausedAll {
					// Active migrations do not move either; say why, as show does.
					fmt.Fprintf(a.Out, "all migrations paused (ferry bbm resume-all%s)\n", a.dbFlag(db))
				}
			}
			if asJSON && len(failed) < len(dbs) {
				if err := a.PrintJSON(all); err != nil {
					return err
				}
			}
			return errors.Join(failed...)
		},
	}
	if name == "status" {
		cmd.Short = "Same as list (GitLab's gitlab:background_migrations:status)"
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func bbmShowCmd(a *App) *cobra.Command {
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "show ID | CLASS TABLE COLUMN ARGS_JSON | show[ID] | finalize[CLASS,TABLE,COLUMN,ARGS_JSON]",
		Short: "Show a migration, its recent jobs and its failed jobs with their errors",
		Args:  idOrConfigArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := a.parseRef(args)
			if err != nil {
				return err
			}
			// A negative LIMIT used to fail in PostgreSQL with exit 1.
			if err := checkIntFlags(cmd, intRange{"limit", 0, math.MaxInt64}); err != nil {
				return err
			}
			ctx := cmd.Context()
			db, err := a.bbmFind(ctx, ref, "show")
			if err != nil {
				return err
			}
			e, err := a.bbmEngineFor(ctx, db)
			if err != nil {
				return err
			}
			id, err := ref.resolve(ctx, e)
			if err != nil {
				return err
			}
			m, err := e.Get(ctx, id)
			if err != nil {
				return bbmErr(err)
			}
			recent, err := e.Jobs(ctx, id, false, limit)
			if err != nil {
				return err
			}
			failed, err := e.Jobs(ctx, id, true, limit)
			if err != nil {
				return err
			}
			settings, err := e.GetSettings(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return a.PrintJSON(map[string]any{"database": db, "migration": m, "recent_jobs": recent, "failed_jobs": failed, "settings": settings})
			}
			w := tabwriter.NewWriter(a.Out, 0, 0, 2, ' ', 0)
			if a.multiDB() {
				fmt.Fprintf(w, "Database\t%s\n", db)
			}
			fmt.Fprintf(w, "Id\t%s\n", a.dbRef(db, m.ID))
			fmt.Fprintf(w, "Migration\t%s\n", m.StatusLine())
			fmt.Fprintf(w, "Status\t%s\n", m.Status)
			figures := m.Progress
			figures.Reason = "" // on its own line below
			fmt.Fprintf(w, "Progress\t%s\n", fmtProgress(figures))
			fmt.Fprintf(w, "Min value / Max value\t%d / %d\n", m.MinValue, m.MaxValue)
			fmt.Fprintf(w, "Batch size / Sub-batch size\t%d / %d (adaptive)\n", m.BatchSize, m.SubBatchSize)
			fmt.Fprintf(w, "Parallel batches\t%d (running now: %d)\n", m.MaxParallel, m.Progress.Running)
			fmt.Fprintf(w, "Pause time (ms)\t%d\n", m.PauseMs)
			fmt.Fprintf(w, "Statement timeout\t%s\n", time.Duration(m.StmtTimeoutMs)*time.Millisecond)
			fmt.Fprintf(w, "Created on\t%s\n", m.CreatedAt.Format(time.RFC3339))
			if m.OnHoldUntil != nil && m.OnHoldUntil.After(time.Now()) {
				fmt.Fprintf(w, "On hold until\t%s\n", m.OnHoldUntil.Format(time.RFC3339))
			}
			if m.SlowUntil != nil && m.SlowUntil.After(time.Now()) {
				fmt.Fprintf(w, "Slowed until\t%s\n", m.SlowUntil.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "State\t%s\n", m.Progress.State)
			if m.Progress.Reason != "" {
				fmt.Fprintf(w, "Reason\t%s\n", m.Progress.Reason)
			}
			if settings.PausedAll {
				fmt.Fprintf(w, "Cluster\tall migrations paused (ferry bbm resume-all%s)\n", a.dbFlag(db))
			}
			switch {
			case m.Status == batched.Finished || m.Status == batched.Finalized:
				// Nothing left to finish.
			case a.runnable(m.Migration):
				fmt.Fprintf(w, "Finalize with\t%s\n", a.finalizeCommand(db, m.Migration))
			default:
				fmt.Fprintf(w, "Finish with\t%s (class %s is not in this binary, so finalize cannot run it; remaining rows are NOT migrated)\n",
					a.markFinishedCommand(db, m.Migration), m.Class)
			}
			w.Flush()
			printJobs := func(title string, jobs []batched.Job) {
				fmt.Fprintf(a.Out, "\n%s\n", title)
				w := tabwriter.NewWriter(a.Out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "Id\tStatus\tMin value\tMax value\tBatch size\tSub-batch\tAttempts\tRows\tDuration\tError")
				for _, j := range jobs {
					dur := ""
					if j.StartedAt != nil && j.FinishedAt != nil {
						dur = j.FinishedAt.Sub(*j.StartedAt).Round(time.Millisecond).String()
					}
					msg := ""
					if j.ErrorClass != nil {
						msg = *j.ErrorClass
						if j.ErrorMessage != nil {
							msg += ": " + *j.ErrorMessage
						}
					}
					fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", j.ID, j.Status, j.MinValue, j.MaxValue, j.BatchSize, j.SubBatchSize, j.Attempts, j.RowsDone, dur, msg)
				}
				w.Flush()
			}
			printJobs("Recent jobs:", recent)
			printJobs("Failed jobs:", failed)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 10, "jobs to show")
	return cmd
}

func bbmSimpleCmd(a *App, name, short string, op func(*batched.Engine, context.Context, int64) (*batched.Migration, error)) *cobra.Command {
	return &cobra.Command{
		Use:   name + " ID | CLASS TABLE COLUMN ARGS_JSON",
		Short: short,
		Args:  idOrConfigArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := a.parseRef(args)
			if err != nil {
				return err
			}
			e, db, err := a.bbmWriteEngine(cmd.Context(), ref, name)
			if err != nil {
				return err
			}
			id, err := ref.resolve(cmd.Context(), e)
			if err != nil {
				return err
			}
			m, err := op(e, cmd.Context(), id)
			if err != nil {
				return bbmErr(a.dbErr(db, err))
			}
			fmt.Fprintln(a.Out, a.writeLine(db, m))
			return nil
		},
	}
}

func bbmFinalizeCmd(a *App) *cobra.Command {
	var quiet bool
	return finalizeFlags(&cobra.Command{
		Use:   "finalize CLASS TABLE COLUMN ARGS_JSON | finalize[CLASS,TABLE,COLUMN,ARGS_JSON]",
		Short: "Run the rest of a migration now, in this process, with a progress bar",
		Long: `Finish a migration synchronously (GitLab's gitlab:background_migrations:finalize):
failed batches get fresh attempts, background workers stop taking its
batches, and this process runs them, ignoring holds and max-running. The
pasted rake form works too, with GitLab's prefix replaced by "ferry bbm " or
kept, and after "ferry bbm finalize"; :main names ferry's one database:
  ferry bbm finalize[CopyColumnUsingBackgroundMigrationJob,events,id,'[["id"]\, ["id_convert_to_bigint"]]']
  ferry bbm gitlab:background_migrations:finalize:main[...]
The migration may also be given by id. Progress goes to stderr (--progress).
Interrupting it (Ctrl-C) makes the migration active again.`,
		Args: idOrConfigArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Before any SQL: PostgreSQL answers invalid UTF-8 with a raw
			// SQLSTATE 22021 and exit 1.
			ref, err := a.parseRef(args)
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			e, db, err := a.bbmWriteEngine(ctx, ref, "finalize")
			if err != nil {
				return err
			}
			id, err := ref.resolve(ctx, e)
			if err != nil {
				return err
			}
			info, err := e.Get(ctx, id)
			if err != nil {
				return bbmErr(err)
			}
			m := info.Migration
			if m.Status.Done() {
				fmt.Fprintf(a.Err, "Batched background migration for the given configuration is already finished: %s\n", m.StatusLine())
				return nil
			}
			if !a.runnable(m) {
				return bbmErr(fmt.Errorf("%w %s: this ferry binary cannot finalize migration %s. If its rows were migrated another way, "+
					"mark it finished (its remaining rows are NOT migrated):\n\t%s", batched.ErrUnknownClass, m.Class, a.dbRef(db, m.ID), a.markFinishedCommand(db, m)))
			}
			if quiet {
				a.progressMode = progressNone
			}
			if err := a.finalizeWithProgress(ctx, e, m); err != nil {
				if ctx.Err() != nil {
					// Finalize gave the migration back to the workers.
					return No(fmt.Errorf("finalize interrupted; migration %s is active again", a.dbRef(db, m.ID)))
				}
				return bbmErr(err)
			}
			fmt.Fprintln(a.Out, "Done.")
			return nil
		},
	}, &quiet)
}

func finalizeFlags(cmd *cobra.Command, quiet *bool) *cobra.Command {
	cmd.Flags().BoolVar(quiet, "no-progress", false, "do not draw the progress bar (same as --progress none)")
	return cmd
}

// finalizeWithProgress finalizes m in this process (bbm finalize, db
// migrate --finalize), showing its progress.
func (a *App) finalizeWithProgress(ctx context.Context, e *batched.Engine, m *batched.Migration) error {
	// The rows done before this run are the progress's starting point,
	// not part of its rate.
	var rows0, total int64
	if info, err := e.Get(ctx, m.ID); err == nil {
		rows0 = info.Progress.RowsDone
	}
	if m.TotalTuples != nil {
		total = *m.TotalTuples
	}
	p := a.newProgress(fmt.Sprintf("%s %s.%s", m.Class, m.Table, m.Column), "rows", total, rows0, time.Now())
	done := make(chan error, 1)
	go func() { done <- e.Finalize(ctx, m) }()
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if p != nil {
				rows := int64(-1)
				if info, gerr := e.Get(context.WithoutCancel(ctx), m.ID); gerr == nil {
					rows = info.Progress.RowsDone
				}
				// 100% only when the migration is done; after an
				// interrupt or a failure it shows where it is.
				p.end(rows, err == nil, time.Now())
			}
			return err
		case <-tick.C:
			if p == nil {
				continue
			}
			if info, err := e.Get(ctx, m.ID); err == nil {
				p.update(info.Progress.RowsDone, time.Now())
			}
		}
	}
}

func bbmMarkFinishedCmd(a *App) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "mark-finished ID | CLASS TABLE COLUMN ARGS_JSON --yes",
		Short: "Mark a migration finished WITHOUT migrating its remaining rows (logged)",
		Long: `Mark a migration and all its batches finished without running them, for
when the data was fixed another way. Remaining rows are NOT migrated.
Who and when is recorded in the transition log of every batch changed.`,
		Args: idOrConfigArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := a.parseRef(args)
			if err != nil {
				return err
			}
			e, db, err := a.bbmWriteEngine(cmd.Context(), ref, "mark-finished")
			if err != nil {
				return err
			}
			id, err := ref.resolve(cmd.Context(), e)
			if err != nil {
				return err
			}
			if !yes {
				return Usagef("refusing to mark migration %s finished without --yes: its remaining rows would not be migrated", a.dbRef(db, id))
			}
			who := "unknown"
			if u, err := user.Current(); err == nil {
				who = u.Username
			}
			if h, err := os.Hostname(); err == nil {
				who += "@" + h
			}
			m, err := e.MarkFinished(cmd.Context(), id, who)
			if err != nil {
				return bbmErr(a.dbErr(db, err))
			}
			fmt.Fprintln(a.Out, a.writeLine(db, m))
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm")
	return cmd
}

func bbmWaitCmd(a *App) *cobra.Command {
	var interval time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "wait",
		Short: "Wait until no unfinished migration remains; exit 1 if any failed",
		Long: `Wait until no unfinished migration remains; exit 1 if any failed.
With --json, stdout gets only the final state of every migration waited
on (as list --json prints it), and the progress messages go to stderr.
With several databases it waits on all of them (or --db's).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return Usagef("--interval must be positive, got %s", interval)
			}
			ctx := cmd.Context()
			dbs, err := a.bbmReadDBs()
			if err != nil {
				return err
			}
			msgs := a.Out
			if asJSON {
				msgs = a.Err
			}
			type key struct {
				db string
				id int64
			}
			var waitedOn []key // in the order first seen
			seen := map[key]bool{}
			final := func() error {
				if !asJSON {
					return nil
				}
				out := []dbInfo{}
				for _, k := range waitedOn {
					e, err := a.bbmEngineFor(ctx, k.db)
					if err != nil {
						return err
					}
					m, err := e.Get(ctx, k.id)
					if errors.Is(err, batched.ErrNotFound) {
						continue // deleted meanwhile
					}
					if err != nil {
						return a.dbErr(k.db, err)
					}
					out = append(out, dbInfo{Database: k.db, MigrationInfo: m})
				}
				return a.PrintJSON(out)
			}
			type dbm struct {
				db string
				m  *batched.MigrationInfo
			}
			polled := false // a poll succeeded: the settings are right
			var lost logrepeat.Log[struct{}]
			for {
				var failed, waiting []dbm
				var err error
				for _, db := range dbs {
					var ms []*batched.MigrationInfo
					if ms, err = a.bbmUnfinished(ctx, db); err != nil {
						break
					}
					for _, m := range ms {
						if k := (key{db, m.ID}); !seen[k] {
							seen[k] = true
							waitedOn = append(waitedOn, k)
						}
						if m.Status == batched.Failed {
							failed = append(failed, dbm{db, m})
						} else {
							waiting = append(waiting, dbm{db, m})
						}
					}
				}
				switch {
				case err != nil && (!polled || !batched.IsConnLoss(err)):
					// A first poll that fails is a setting to fix, not a
					// restart to wait out.
					return err
				case err != nil:
					// A restart or failover: the workers wait it out, and
					// so does wait (said when it starts and every minute).
					now := time.Now()
					if since, _, say := lost.On(struct{}{}, now); say {
						fmt.Fprintf(a.Err, "ferry: still waiting: %v (for %s; trying again every %s)\n", err, now.Sub(since).Round(time.Second), interval)
					}
					if !sleep.For(ctx, interval) {
						return ctx.Err()
					}
					continue
				}
				if since, _, was := lost.Off(struct{}{}); was {
					fmt.Fprintf(a.Err, "ferry: the database answers again after %s\n", time.Since(since).Round(time.Second))
				}
				polled = true
				if len(failed) > 0 {
					fmt.Fprintln(msgs, "Some batched background migrations are in a failed state and must be finalized manually:")
					for _, f := range failed {
						fmt.Fprintf(msgs, "\t%s%s\n\t\t%s\n", a.dbLabel(f.db), f.m.StatusLine(), a.finishCommand(f.db, f.m.Migration))
					}
					if err := final(); err != nil {
						return err
					}
					return No(errSilent)
				}
				if len(waiting) == 0 {
					fmt.Fprintln(msgs, "All batched background migrations have finished.")
					return final()
				}
				fmt.Fprintf(msgs, "Still waiting on %d batched background migration(s):\n", len(waiting))
				for _, w := range waiting {
					fmt.Fprintf(msgs, "\t%s%s | %s\n", a.dbLabel(w.db), w.m.StatusLine(), fmtProgress(w.m.Progress))
				}
				if !sleep.For(ctx, interval) {
					return ctx.Err()
				}
			}
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 30*time.Second, "time between checks")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the final state of the migrations waited on as JSON (messages go to stderr)")
	return cmd
}

// CheckMessage is the upgrade-blocking text for one unfinished migration.
func CheckMessage(m *batched.Migration) string {
	return checkMessage(m, true, m.FinalizeCommand(), markFinishedCommand(m))
}

// checkMessage is CheckMessage for a migration whose class this binary
// can run (runnable) or not: finalize would then fail, and the way out is
// mark-finished.
func checkMessage(m *batched.Migration, runnable bool, finalize, markFinished string) string {
	head := batched.UnfinishedHead(m.Status.String(), m.Config())
	if !runnable {
		return head + unregisteredNote(m) + "\n\n\t" + markFinished + "\n"
	}
	return head + batched.FinalizeAdvice(finalize) + "\n"
}

// checkMessageIn is checkMessage for a migration of database db.
func (a *App) checkMessageIn(db string, m *batched.Migration) string {
	msg := checkMessage(m, a.runnable(m), a.finalizeCommand(db, m), a.markFinishedCommand(db, m))
	if a.multiDB() {
		msg = "Database: " + db + "\n" + msg
	}
	return msg
}

// runnable reports whether this binary registers m's class.
func (a *App) runnable(m *batched.Migration) bool {
	_, ok := a.Reg.BBM.Lookup(m.Class)
	return ok
}

// finishCommand is the command that gets m finished: finalize, or
// mark-finished when this binary cannot run its class.
func (a *App) finishCommand(db string, m *batched.Migration) string {
	if a.runnable(m) {
		return a.finalizeCommand(db, m)
	}
	return a.markFinishedCommand(db, m)
}

func markFinishedCommand(m *batched.Migration) string {
	return fmt.Sprintf("ferry bbm mark-finished %d --yes", m.ID)
}

// unregisteredNote says why finalize is not the way out, and what
// mark-finished does not do.
func unregisteredNote(m *batched.Migration) string {
	return fmt.Sprintf("Class %s is not registered in this ferry binary, so `ferry bbm finalize` cannot run it "+
		"(a binary that registers it can). If its rows were migrated another way, mark it finished; "+
		"its remaining rows are NOT migrated:", m.Class)
}

func bbmCheckCmd(a *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Exit 0 if every migration is finished, else 1 with the command that fixes each",
		Long: `Pre-upgrade check: exit 0 when every migration is finished or finalized;
otherwise exit 1 and print, for each, GitLab's upgrade-blocking message
with its configuration and the ferry bbm finalize command that fixes it.
With several databases it checks all of them (or --db's) and names them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dbs, err := a.bbmReadDBs()
			if err != nil {
				return err
			}
			out := []map[string]any{}
			n := 0
			var failed []error
			var read []string
			for _, db := range dbs {
				ms, err := a.bbmUnfinished(cmd.Context(), db)
				if err != nil {
					// A database that cannot be read is not known to be
					// finished: the answer is no, naming it.
					failed = append(failed, err)
					if asJSON { // as db status --json says it
						out = append(out, map[string]any{"database": db, "error": err.Error()})
					}
					continue
				}
				read = append(read, db)
				for _, m := range ms {
					msg := a.checkMessageIn(db, m.Migration)
					if asJSON {
						out = append(out, map[string]any{"database": db, "id": m.ID, "status": m.Status, "configuration": m.Config(),
							"finalize_command": a.finishCommand(db, m.Migration), "message": msg})
						continue
					}
					if n > 0 {
						fmt.Fprintln(a.Out)
					}
					fmt.Fprint(a.Out, msg)
					n++
				}
			}
			if asJSON {
				if err := a.PrintJSON(out); err != nil {
					return err
				}
				n = len(out)
			} else if n == 0 && len(failed) == 0 {
				fmt.Fprintln(a.Out, "All batched background migrations are finished.")
			} else if n == 0 && len(read) > 0 {
				// Say what is known of the databases that could be read.
				fmt.Fprintf(a.Out, "All batched background migrations of %s are finished.\n", strings.Join(read, ", "))
			}
			if len(failed) > 0 {
				return No(errors.Join(failed...))
			}
			if n > 0 {
				return No(errSilent)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func bbmSetCmd(a *App) *cobra.Command {
	set := &cobra.Command{Use: "set", Short: "Change cluster-wide or per-migration settings"}
	set.AddCommand(&cobra.Command{
		Use:   "max-running N",
		Short: "How many migrations may run at once, cluster-wide (default 2)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 || n > bbmMaxRunning {
				return Usagef("max-running must be an integer between 0 and %d, got %q", bbmMaxRunning, args[0])
			}
			dbs, err := a.bbmWriteDBs("set max-running")
			if err != nil {
				return err
			}
			for _, db := range dbs {
				e, err := a.bbmEngineFor(cmd.Context(), db)
				if err != nil {
					return err
				}
				if err := e.SetMaxRunning(cmd.Context(), n); err != nil {
					return bbmErr(a.dbErr(db, err))
				}
				fmt.Fprintf(a.Out, "%smax-running is now %d\n", a.dbLabel(db), n)
				if n == 0 {
					fmt.Fprintf(a.Err, "warning: %sno batched background migration runs until max-running is raised again (`ferry bbm set max-running 2`); `ferry bbm pause-all` says so more plainly\n", a.dbLabel(db))
				}
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "parallel ID N",
		Short: "How many batches of one migration may run at once",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			known := a.Cfg.DatabaseNames()
			if len(known) == 0 {
				known = []string{mainDatabase}
			}
			ref, err := idRef(args[0], known)
			if err != nil {
				return err
			}
			ref.raw = args[0]
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > bbmMaxParallel {
				return Usagef("parallel must be between 1 and %d, got %q", bbmMaxParallel, args[1])
			}
			e, db, err := a.bbmWriteEngine(cmd.Context(), ref, "set parallel")
			if err != nil {
				return err
			}
			if err := e.SetParallel(cmd.Context(), ref.id, n); err != nil {
				return bbmErr(a.dbErr(db, err))
			}
			fmt.Fprintf(a.Out, "migration %s may run %d batches at once\n", a.dbRef(db, ref.id), n)
			return nil
		},
	})
	return set
}

func bbmPauseAllCmd(a *App, name string, pause bool) *cobra.Command {
	short := "Stop starting batches of any migration (running batches finish)"
	if !pause {
		short = "Undo pause-all"
	}
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dbs, err := a.bbmWriteDBs(name)
			if err != nil {
				return err
			}
			for _, db := range dbs {
				e, err := a.bbmEngineFor(cmd.Context(), db)
				if err != nil {
					return err
				}
				if err := e.SetPausedAll(cmd.Context(), pause); err != nil {
					return a.dbErr(db, err)
				}
				if pause {
					fmt.Fprintf(a.Out, "%sAll batched background migrations paused (running batches finish).\n", a.dbLabel(db))
				} else {
					fmt.Fprintf(a.Out, "%sBatched background migrations resumed.\n", a.dbLabel(db))
				}
			}
			return nil
		},
	}
}
