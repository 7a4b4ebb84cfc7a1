package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

type dbFlags struct {
	dir         string
	lockTimeout time.Duration
	pgBin       string
}

func newDBCmd(a *App) *cobra.Command {
	f := &dbFlags{}
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Versioned SQL schema migrations, backup and restore",
		Long: `Schema migrations are SQL files in --dir (default db/migrate) named
<version>_<name>.up.sql and <version>_<name>.down.sql; versions are digits,
ordered numerically (Rails timestamps work). Applied versions are kept in
Rails' schema_migrations table, so

  INSERT INTO schema_migrations (version) VALUES ('20151103134857');

marks one complete; every attempt is logged in ferry_migration_log.

Each migration runs in its own transaction unless its first line is
"-- ferry:no-transaction" (for CREATE INDEX CONCURRENTLY); one that fails
outside a transaction leaves the database dirty and migrate refuses until
you fix it and run "ferry db repair", or undo it with "ferry db downto".

Directives (own lines in an up file):
  -- ferry:require-bbm CLASS TABLE COLUMN ARGS_JSON   the batched background
       migration must be finished before this migration runs (finalized
       inline with "migrate --finalize", otherwise migrate stops)
  -- ferry:queue-bbm CLASS TABLE COLUMN ARGS_JSON     queue it once this
       migration is committed

Only one migrator runs at a time (advisory lock); others fail at once
naming the holder, or wait up to --lock-timeout.

Behind PgBouncer in transaction mode, set DATABASE_DIRECT_URL (config
database_direct_url) to a direct connection: these commands need a real
session (the migrator's lock, pg_dump, pg_restore) and use it when set.`,
	}
	a.PreValidate(cmd, func(c *config.Config) {
		// The direct URL wins, unless --database-url alone names another.
		if c.DatabaseDirectURL != "" && (a.databaseURL == "" || a.directURL != "") {
			c.DatabaseURL = c.DatabaseDirectURL
		}
	})
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.dir, "dir", "db/migrate", "directory of migration files")
	pf.DurationVar(&f.lockTimeout, "lock-timeout", 0, "wait this long for another migrator (0 = fail at once)")
	cmd.AddCommand(dbMigrateCmd(a, f), dbStatusCmd(a, f), dbDowntoCmd(a, f), dbMarkCompleteCmd(a, f),
		dbRepairCmd(a, f), dbBackupCmd(a, f), dbRestoreCmd(a, f))
	return cmd
}

// checkLockTimeout refuses --lock-timeout values PostgreSQL's lock_timeout
// would misread: negative ones silently meant "fail at once", under a
// millisecond meant 0 = wait forever, and past its integer range the SET
// failed with a raw error and exit 1.
func (f *dbFlags) checkLockTimeout() error {
	d := f.lockTimeout
	if d < 0 || (d > 0 && d < time.Millisecond) || d.Milliseconds() > maxInt4 {
		return Usagef("--lock-timeout: must be 0 (fail at once) or between 1ms and %s, got %s",
			time.Duration(maxInt4)*time.Millisecond, d)
	}
	return nil
}

// migrator loads the files and opens the database.
func (a *App) migrator(ctx context.Context, f *dbFlags, finalize bool) (*dbmigrate.Migrator, error) {
	return a.openMigrator(ctx, f, finalize, true)
}

// recordMigrator is a migrator for the commands that only record a
// version (mark-complete, repair): they work outside the application's
// folder, without the default migrations directory. A --dir given on
// the command line must still exist (a typo there is not "no directory").
func (a *App) recordMigrator(cmd *cobra.Command, f *dbFlags) (*dbmigrate.Migrator, error) {
	return a.openMigrator(cmd.Context(), f, false, cmd.Flags().Changed("dir"))
}

func (a *App) openMigrator(ctx context.Context, f *dbFlags, finalize, needDir bool) (*dbmigrate.Migrator, error) {
	if err := f.checkLockTimeout(); err != nil {
		return nil, err
	}
	var migs []*dbmigrate.Migration
	if _, serr := os.Stat(f.dir); serr == nil || needDir {
		var err error
		if migs, err = dbmigrate.LoadDir(f.dir); err != nil {
			if serr != nil {
				return nil, Usagef("migrations directory %s: %v (set --dir)", f.dir, serr)
			}
			return nil, Usage(err)
		}
	}
	pool, err := a.DB(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	return dbmigrate.New(pool, migs, dbmigrate.Options{
		Logger: a.Log, Dir: f.dir, Out: a.Out, Finalize: finalize, LockTimeout: f.lockTimeout,
		Gate: &engineGate{a: a, table: dbmigrate.TableGate{DB: pool}},
	}), nil
}

// engineGate connects gates to the batched migration engine, opening it
// (and so creating ferry's tables) only when a migration queues or
// finalizes one; status checks read the table directly.
type engineGate struct {
	a     *App
	table dbmigrate.TableGate
	once  sync.Mutex
	e     *batched.Engine
}

func (g *engineGate) engine(ctx context.Context) (*batched.Engine, error) {
	g.once.Lock()
	defer g.once.Unlock()
	if g.e == nil {
		e, err := g.a.bbmEngine(ctx)
		if err != nil {
			return nil, err
		}
		g.e = e
	}
	return g.e, nil
}

func (g *engineGate) Status(ctx context.Context, b dbmigrate.BBM) (string, bool, error) {
	return g.table.Status(ctx, b)
}

func (g *engineGate) Queue(ctx context.Context, b dbmigrate.BBM, v dbmigrate.Version) error {
	e, err := g.engine(ctx)
	if err != nil {
		return err
	}
	res, err := e.Queue(ctx, batched.QueueOptions{Class: b.Class, Table: b.Table, Column: b.Column, Args: b.Args, Version: string(v)})
	if err == nil && res.Existing {
		g.a.Log.Info("batched background migration already queued", zap.String("class", b.Class))
	}
	return err
}

func (g *engineGate) Finalize(ctx context.Context, b dbmigrate.BBM) error {
	if _, ok := g.a.Reg.BBM.Lookup(b.Class); !ok {
		// Finalizing would only fail the migration; the gate's error
		// gives the way out (WayOut).
		return fmt.Errorf("%w %s", batched.ErrUnknownClass, b.Class)
	}
	e, err := g.engine(ctx)
	if err != nil {
		return err
	}
	m, err := e.FindByConfig(ctx, b.Class, b.Table, b.Column, b.Args)
	if err != nil {
		return err
	}
	// Hours on a real table: show it, as `ferry bbm finalize` does.
	return g.a.finalizeWithProgress(ctx, e, m)
}

// WayOut implements [dbmigrate.WayOuter]: a class this binary lacks
// cannot be finalized here, mark-finished is the way out.
func (g *engineGate) WayOut(ctx context.Context, b dbmigrate.BBM) string {
	if _, ok := g.a.Reg.BBM.Lookup(b.Class); ok {
		return ""
	}
	m, err := batched.FindConfig(ctx, g.table.DB, b.Class, b.Table, b.Column, b.Args)
	if err != nil {
		return ""
	}
	return unregisteredNote(m) + "\n\n\t" + markFinishedCommand(m)
}

// dbErr maps dbmigrate errors to exit codes: bad input 2, the rest 1.
func dbErr(err error) error {
	var ee *ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return err
	case errors.Is(err, dbmigrate.ErrBadVersion), errors.Is(err, dbmigrate.ErrBadSource),
		errors.Is(err, dbmigrate.ErrUnknownVersion), errors.Is(err, dbmigrate.ErrNotConfirmed), errors.Is(err, dbmigrate.ErrNeedsSession),
		errors.Is(err, dbmigrate.ErrOtherDatabase), errors.Is(err, dbmigrate.ErrBadBackup):
		return Usage(err)
	}
	return No(err)
}

func parseVersionArg(s string) (dbmigrate.Version, error) {
	v, err := dbmigrate.ParseVersion(s)
	if err != nil {
		return "", Usage(err)
	}
	return v, nil
}

func (a *App) printPlan(ctx context.Context, mr *dbmigrate.Migrator, p *dbmigrate.Plan) {
	if len(p.Migrations) == 0 {
		fmt.Fprintln(a.Out, "Nothing to do (dry run).")
		return
	}
	fmt.Fprintf(a.Out, "Dry run: would run %d migration(s) %s, in this order:\n", len(p.Migrations), p.Direction)
	for _, m := range p.Migrations {
		sc, file := m.Up, m.UpFile
		if p.Direction == "down" {
			sc, file = m.Down, m.DownFile
		}
		how := "in a transaction"
		if sc.NoTransaction {
			how = "outside a transaction, statement by statement"
		}
		fmt.Fprintf(a.Out, "\n== %s %s (%s, %s) ==\n", m.Version, m.Name, file, how)
		for _, b := range sc.Require {
			fmt.Fprintf(a.Out, "-- requires finished batched background migration: %s %s %s %s (%s)\n", b.Class, b.Table, b.Column, b.Args, gateNote(ctx, mr, b))
		}
		if sc.NoTransaction {
			for i, s := range sc.Statements() {
				fmt.Fprintf(a.Out, "-- statement %d\n%s;\n", i+1, s)
			}
		} else {
			fmt.Fprintln(a.Out, strings.TrimRight(sc.SQL, "\n"))
		}
		for _, b := range sc.Queue {
			fmt.Fprintf(a.Out, "-- then queues batched background migration: %s %s %s %s\n", b.Class, b.Table, b.Column, b.Args)
		}
	}
}

// gateNote says what a require-bbm gate would do now.
func gateNote(ctx context.Context, m *dbmigrate.Migrator, b dbmigrate.BBM) string {
	status, found, err := m.GateStatus(ctx, b)
	switch {
	case err != nil:
		return "status unknown: " + err.Error()
	case !found:
		return "never queued in this database: migrate warns and continues"
	case status == "finished" || status == "finalized":
		return "it is '" + status + "'"
	}
	return "it is '" + status + "': migrate would stop here; finalize it first or use --finalize"
}

func dbMigrateCmd(a *App, f *dbFlags) *cobra.Command {
	var to string
	var dry, finalize bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending migrations (all, or up to --to VERSION)",
		Example: `  ferry db migrate
  ferry db migrate --to 20240101120000 --dry-run
  ferry db migrate --finalize --lock-timeout 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var target dbmigrate.Version
			// An explicit --to "" (an unset shell variable) must not mean "all".
			if to != "" || cmd.Flags().Changed("to") {
				v, err := parseVersionArg(to)
				if err != nil {
					return err
				}
				target = v
			}
			m, err := a.migrator(ctx, f, finalize)
			if err != nil {
				return err
			}
			if dry {
				p, err := m.PlanUp(ctx, target)
				if err != nil {
					return dbErr(err)
				}
				if p.Dirty != nil {
					fmt.Fprintf(a.Out, "Note: migrate would refuse: %v\n\n", p.Dirty)
				}
				a.printPlan(ctx, m, p)
				return nil
			}
			done, err := m.Migrate(ctx, target)
			if err != nil {
				return dbErr(err)
			}
			if len(done) == 0 {
				fmt.Fprintln(a.Out, "Nothing to migrate: the database is up to date.")
			} else {
				fmt.Fprintf(a.Out, "Applied %d migration(s).\n", len(done))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "stop after this version (inclusive)")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the plan and SQL, change nothing")
	cmd.Flags().BoolVar(&finalize, "finalize", false, "finalize unfinished required batched background migrations inline")
	return cmd
}

func dbStatusCmd(a *App, f *dbFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show applied, pending, failed and dirty migrations; exit 1 when dirty or a migration is pending",
		Long: `Show applied, pending, failed and dirty migrations.

Exit 0 when the database is up to date with --dir; exit 1 when it is dirty
or a migration in --dir is not applied (so a deploy script can gate on it);
the output, and --json, are the same either way.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			m, err := a.migrator(ctx, f, false)
			if err != nil {
				return err
			}
			st, err := m.Status(ctx)
			if err != nil {
				return dbErr(err)
			}
			if asJSON {
				if err := a.PrintJSON(st); err != nil {
					return err
				}
				return statusExit(st)
			}
			if d := st.DirtyMigration; d != nil {
				// First, on one line, so nobody reads past it.
				what := "failed with: " + oneLine(d.Error)
				if d.Died {
					what = "was interrupted: its migrator died (started " + d.StartedAt.UTC().Format(time.RFC3339) + ")"
				}
				fmt.Fprintf(a.Out, "DIRTY: migration %s_%s (%s) %s; it ran outside a transaction, so the database may be half-migrated and `ferry db migrate` refuses to run. Ways out: %s; or %s.\n\n",
					d.Version, d.Name, d.Direction, what, d.WaysOut[0], d.WaysOut[1])
			}
			fmt.Fprintf(a.Out, "%-16s %-12s %-22s %s\n", "VERSION", "STATE", "WHEN", "NAME")
			for _, ms := range st.Migrations {
				when := ""
				if ms.AppliedAt != nil {
					when = ms.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
				} else if la := ms.LastAttempt; la != nil {
					when = la.StartedAt.UTC().Format("2006-01-02 15:04:05Z")
				}
				name := ms.Name
				if !ms.HasFile {
					name += " (no file in " + f.dir + ")"
				}
				fmt.Fprintf(a.Out, "%-16s %-12s %-22s %s\n", ms.Version, ms.State, when, name)
				if la := ms.LastAttempt; la != nil && (ms.State == "failed" || ms.State == "dirty") {
					fmt.Fprintf(a.Out, "%16s error: %s\n", "", oneLine(la.Error))
				}
			}
			fmt.Fprintf(a.Out, "\nCurrent version: %s; %d pending.\n", st.Current, st.Pending)
			if st.Holder != nil {
				fmt.Fprintf(a.Out, "A migrator is running: %s\n", st.Holder)
			}
			if d := st.DirtyMigration; d != nil {
				fmt.Fprintf(a.Out, "The database is DIRTY at migration %s_%s: see the first line.\n", d.Version, d.Name)
			}
			return statusExit(st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

// statusExit answers "is the database ready?": no (1) when it is dirty or
// a migration is pending; what is wrong was printed already.
func statusExit(st *dbmigrate.Status) error {
	if st.Dirty || st.Pending > 0 {
		return No(errSilent)
	}
	return nil
}

// oneLine joins a multi-line error (PostgreSQL's DETAIL, HINT and
// position come on indented lines) into one.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\n  ", "; "), "\n", " ")
}

func dbDowntoCmd(a *App, f *dbFlags) *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use:   "downto VERSION",
		Short: "Revert every migration newer than VERSION (VERSION stays applied; 0 reverts all)",
		Long: `Runs the down files of every applied migration newer than VERSION, newest
first; VERSION itself stays applied (as Rails' "db:migrate VERSION=x" going
down, goose down-to and Sourcegraph's downto). A dirty migration newer than
VERSION is reverted too: this is the way out of a half-applied
no-transaction migration, so down files should tolerate a partial state
(IF EXISTS). Nothing runs unless every needed down file exists.`,
		Example: `  ferry db downto 20240101120000 --dry-run
  ferry db downto 0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			target, err := parseVersionArg(args[0])
			if err != nil {
				return err
			}
			m, err := a.migrator(ctx, f, false)
			if err != nil {
				return err
			}
			if dry {
				p, err := m.PlanDown(ctx, target)
				if err != nil {
					return dbErr(err)
				}
				a.printPlan(ctx, m, p)
				return nil
			}
			done, err := m.DownTo(ctx, target)
			if err != nil {
				return dbErr(err)
			}
			if len(done) == 0 {
				fmt.Fprintf(a.Out, "Nothing to revert: no migration newer than %s is applied.\n", target)
			} else {
				fmt.Fprintf(a.Out, "Reverted %d migration(s); now at %s.\n", len(done), target)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the plan and SQL, change nothing")
	return cmd
}

func dbMarkCompleteCmd(a *App, f *dbFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-complete VERSION | mark_migration_complete[VERSION]",
		Short: "Record VERSION as applied without running it (GitLab's mark_migration_complete)",
		Long: `Record VERSION in schema_migrations without running it, as GitLab's
gitlab:db:mark_migration_complete[VERSION] does (that form is accepted too).
It needs no migrations directory; when --dir exists and has no file for
VERSION it warns and records it anyway.`,
		Example: `  ferry db mark-complete 20151103134857
  ferry db mark_migration_complete[20151103134857]`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			v, err := markCompleteVersion(args[0])
			if err != nil {
				return err
			}
			m, err := a.recordMigrator(cmd, f)
			if err != nil {
				return err
			}
			a.warnNoFile(m, f, v)
			already, err := m.MarkComplete(ctx, v)
			if err != nil {
				return dbErr(err)
			}
			db := a.Cfg.DatabaseURL
			if pool, err := a.DB(ctx); err == nil {
				db = pool.Config().ConnConfig.Database
			}
			if already {
				fmt.Fprintf(a.Out, "Migration version '%s' is already marked complete on database %s\n", v, db)
			} else {
				fmt.Fprintf(a.Out, "Successfully marked '%s' as complete on database %s\n", v, db)
			}
			return nil
		},
	}
}

// markCompleteVersion reads VERSION, also in GitLab's rake form
// (mark_migration_complete[VERSION], with or without gitlab:db: and :main).
func markCompleteVersion(arg string) (dbmigrate.Version, error) {
	if rc, ok := parseRake(arg); ok {
		if rc.Task != "mark_migration_complete" || len(rc.Args) != 1 {
			return "", Usagef("expected VERSION or mark_migration_complete[VERSION], got %q", arg)
		}
		if err := rc.checkDB(); err != nil {
			return "", err
		}
		arg = rc.Args[0]
	}
	v, err := parseVersionArg(arg)
	if err != nil {
		return "", err
	}
	if v == "0" {
		return "", Usagef("Must give a version argument that is a non-zero integer")
	}
	return v, nil
}

// warnNoFile warns when the migrations directory exists but has no file
// for v: a typo in a version is otherwise recorded silently.
func (a *App) warnNoFile(m *dbmigrate.Migrator, f *dbFlags, v dbmigrate.Version) {
	if _, err := os.Stat(f.dir); err != nil {
		return
	}
	for _, mg := range m.Migrations() {
		if mg.Version == v {
			return
		}
	}
	fmt.Fprintf(a.Err, "warning: %s has no migration file for version %s; recording it anyway\n", f.dir, v)
}

func dbRepairCmd(a *App, f *dbFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "repair [VERSION]",
		Short: "Clear the dirty state after you fixed the database by hand",
		Long: `Clears the dirty mark left by a migration that failed outside a transaction
(or whose migrator died), recording it in ferry_migration_log. It does not
change schema_migrations: a failed up stays pending and the next migrate
re-runs it; if you completed it by hand, also run "ferry db mark-complete".`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var v dbmigrate.Version
			if len(args) == 1 {
				var err error
				if v, err = parseVersionArg(args[0]); err != nil {
					return err
				}
			}
			m, err := a.recordMigrator(cmd, f)
			if err != nil {
				return err
			}
			d, err := m.Repair(ctx, v)
			if err != nil {
				return dbErr(err)
			}
			state := "pending: the next `ferry db migrate` runs it again (or `ferry db mark-complete " + string(d.Version) + "` if you applied it by hand)"
			if d.Applied {
				state = "applied"
			}
			fmt.Fprintf(a.Out, "Cleared the dirty state of migration %s_%s (%s attempt #%d). It is %s.\n", d.Version, d.Name, d.Direction, d.ID, state)
			return nil
		},
	}
}

func dbBackupCmd(a *App, f *dbFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "pg_dump the whole database (custom format) to FILE, with FILE.meta.json",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pool, err := a.DB(ctx)
			if err != nil {
				return dbErr(err)
			}
			report, end := a.tableProgress("pg_dump " + args[0])
			meta, err := dbmigrate.Backup(ctx, pool, args[0], dbmigrate.BackupOptions{Logger: a.Log, PgBin: f.pgBin, Progress: report})
			end(err == nil)
			if err != nil {
				return dbErr(err)
			}
			fmt.Fprintf(a.Out, "Backed up database %s (%d tables/views/sequences, %d bytes) to %s; metadata in %s\n",
				meta.Database, meta.Relations, meta.Size, args[0], dbmigrate.MetaPath(args[0]))
			return nil
		},
	}
	cmd.Flags().StringVar(&f.pgBin, "pg-bin", "", "directory of pg_dump/pg_restore (default: matching the server version)")
	return cmd
}

// warnConnected warns that ferry processes use the database a restore
// replaces: their tables change under them.
func (a *App) warnConnected(res *dbmigrate.RestoreResult) {
	names := make([]string, len(res.Connected))
	for i, s := range res.Connected {
		names[i] = s.String()
	}
	then := "the restore replaces their tables under them; stop those workers (or run `ferry bbm pause-all`) first, or re-run with --yes to restore anyway"
	if res.Restored {
		then = "the restore replaced their tables under them (--yes)"
	}
	fmt.Fprintf(a.Err, "warning: %d other ferry session(s) are connected to database %s: %s; %s.\n",
		len(res.Connected), res.Database, strings.Join(names, ", "), then)
}

func dbRestoreCmd(a *App, f *dbFlags) *cobra.Command {
	var yes, force bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore FILE, first dropping every object it does not contain",
		Long: `Restores a "ferry db backup" into the configured database.

First it checks the whole file and changes nothing when a check fails
(exit 2): a pg_dump custom-format archive, the size and SHA-256 that
FILE.meta.json recorded, readable to the end (data included, so a
truncated or corrupt file is caught), a backup of the configured database
by the archive's own header (never by the sidecar; --force-other-database
restores another database's backup), and ferry tables no newer than this
ferry knows.

Then, in ONE transaction, every user object that the backup does not
contain is dropped and printed: tables, views, materialized views,
sequences, foreign tables, types, domains, functions, procedures,
aggregates, schemas, extensions, event triggers and foreign keys added
between tables of the backup (so objects created by a failed upgrade cannot
make the next one fail with "already exists"), and pg_restore --clean
--if-exists --no-owner's script (run by psql) replaces everything else; it
drops and recreates every table of the backup, so columns, indexes and
triggers that the failed upgrade added to them go too. If anything fails
the transaction is rolled back and the database is as it was (exit 1).
Built-in objects and objects belonging to extensions are left alone.
The rows of ferry_migration_log and ferry_web_actions that the backup lacks
(the record of the failed upgrade) are put back in the same transaction.
Other ferry sessions connected to the database are named in a warning.
Without --yes it only checks and prints what it would drop (exit 2).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.checkLockTimeout(); err != nil {
				return err
			}
			ctx := cmd.Context()
			pool, err := a.DB(ctx)
			if err != nil {
				return dbErr(err)
			}
			report, end := a.tableProgress("restore " + args[0])
			res, err := dbmigrate.Restore(ctx, pool, args[0], dbmigrate.BackupOptions{Logger: a.Log, PgBin: f.pgBin,
				Yes: yes, ForceOtherDatabase: force, LockTimeout: f.lockTimeout, Progress: report})
			end(err == nil)
			if errors.Is(err, os.ErrNotExist) {
				return Usage(err)
			}
			if res != nil && len(res.Connected) > 0 && (err == nil || errors.Is(err, dbmigrate.ErrNotConfirmed)) {
				a.warnConnected(res)
			}
			if res != nil && (err == nil || errors.Is(err, dbmigrate.ErrNotConfirmed)) {
				verb := "Dropped"
				if !res.Restored {
					verb = "Would drop"
				}
				if len(res.Dropped) == 0 {
					fmt.Fprintf(a.Out, "%s nothing: every object of database %s is in the backup.\n", verb, res.Database)
				}
				for _, r := range res.Dropped {
					fmt.Fprintf(a.Out, "%s %s (not in the backup)\n", verb, r)
				}
			}
			if errors.Is(err, dbmigrate.ErrNotConfirmed) {
				return Usagef("restore replaces every object of database %s with the backup's; re-run with --yes to do it", res.Database)
			}
			if err != nil {
				return dbErr(err)
			}
			fmt.Fprintf(a.Out, "Restored %s into database %s.\n", args[0], res.Database)
			for _, t := range dbmigrate.RecordTables {
				if n, ok := res.Kept[t]; ok {
					fmt.Fprintf(a.Out, "Kept the record of the time since the backup: %s had %d rows before the restore; those the backup lacks are back.\n", t, n)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "really drop and restore")
	cmd.Flags().BoolVar(&force, "force-other-database", false, "restore a backup taken from another database")
	cmd.Flags().StringVar(&f.pgBin, "pg-bin", "", "directory of pg_dump/pg_restore/psql (default: matching the server version)")
	return cmd
}
