package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

type dbFlags struct {
	dir         string
	db          string
	lockTimeout time.Duration
	pgBin       string
	// pools are the databases opened besides App.DB (see dbPool).
	pools map[string]*pgxpool.Pool
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
Directive of a down file:
  -- ferry:irreversible [WHY]    downto refuses to run it, naming it and WHY

Only one migrator runs at a time (advisory lock); others fail at once
naming the holder, or wait up to --lock-timeout.

Behind PgBouncer in transaction mode, set DATABASE_DIRECT_URL (config
database_direct_url) to a direct connection: these commands need a real
session (the migrator's lock, pg_dump, pg_restore) and use it when set.

More than one database (databases: in the config file, DATABASE_URL_<NAME>):
--db NAME (also --database, and Sourcegraph's -db=NAME) selects one, a
comma-separated list, or all. Without --db, migrate, status, leaves and
mark-complete work on every database, main first; downto, repair, backup
and restore refuse ("Please specify the database"). Each database uses its
own databases.NAME.migrations directory (else --dir), and every output line
starts with the database's name. One database failing or down does not
stop the others; the exit code is the worst. Sourcegraph's migrator
spelling works as written: "up -db=all", "upto -db=X -target=V",
"downto -db=X -target=V".`,
	}
	a.PreValidate(cmd, func(c *config.Config) {
		// The direct URL wins, unless --database-url alone names another.
		if c.DatabaseDirectURL != "" && (a.databaseURL == "" || a.directURL != "") {
			c.UseDirectURL()
		}
	})
	a.CheckFlags(cmd, f.checkLockTimeout)
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.dir, "dir", "db/migrate", "directory of migration files (databases.NAME.migrations wins for that database)")
	pf.StringVar(&f.db, "db", "", "database(s) to work on: NAME, NAME,NAME or all (default: see --help)")
	pf.StringVar(&f.db, "database", "", "same as --db")
	pf.DurationVar(&f.lockTimeout, "lock-timeout", 0, "wait this long for another migrator (0 = fail at once)")
	cmd.AddCommand(dbMigrateCmd(a, f), dbStatusCmd(a, f), dbDowntoCmd(a, f), dbMarkCompleteCmd(a, f),
		dbRepairCmd(a, f), dbBackupCmd(a, f), dbRestoreCmd(a, f), dbLeavesCmd(a, f), dbAddLogCmd(a, f))
	cmd.AddCommand(dbSourcegraphOnlyCmds()...)
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

// migrator loads the target's files and opens its database.
func (a *App) migrator(ctx context.Context, f *dbFlags, t dbTarget, finalize bool) (*dbmigrate.Migrator, error) {
	return a.openMigrator(ctx, f, t, finalize, true)
}

// recordMigrator is a migrator for the commands that only record a
// version (mark-complete, repair): they work outside the application's
// folder, without the default migrations directory. A directory named on
// the command line or in the config must still exist (a typo there is
// not "no directory").
func (a *App) recordMigrator(ctx context.Context, f *dbFlags, t dbTarget) (*dbmigrate.Migrator, error) {
	return a.openMigrator(ctx, f, t, false, t.dirGiven)
}

func (a *App) openMigrator(ctx context.Context, f *dbFlags, t dbTarget, finalize, needDir bool) (*dbmigrate.Migrator, error) {
	if err := f.checkLockTimeout(); err != nil {
		return nil, err
	}
	migs, err := loadMigrations(t, needDir)
	if err != nil {
		return nil, err
	}
	pool, err := a.dbPool(ctx, f, t)
	if err != nil {
		return nil, dbErr(err)
	}
	o := dbmigrate.Options{
		Logger: a.Log, Dir: t.dir, Out: t.out, Finalize: finalize, LockTimeout: f.lockTimeout,
		Gate:     &engineGate{a: a, pool: pool, table: dbmigrate.TableGate{DB: pool}, db: t.selector()},
		Database: t.selector(),
	}
	return dbmigrate.New(pool, migs, o), nil
}

// loadMigrations reads t's directory; without needDir a missing one is
// no migrations.
func loadMigrations(t dbTarget, needDir bool) ([]*dbmigrate.Migration, error) {
	_, serr := os.Stat(t.dir)
	if serr != nil && !needDir {
		return nil, nil
	}
	migs, err := dbmigrate.LoadDir(t.dir)
	if err != nil {
		if serr != nil {
			how := "set --dir"
			if t.named {
				how = "set databases." + t.Name + ".migrations (env " + config.EnvDatabaseMigrationsPrefix + strings.ToUpper(t.Name) + ") or --dir"
			}
			return nil, Usagef("migrations directory %s: %v (%s)", t.dir, serr, how)
		}
		return nil, Usage(err)
	}
	return migs, nil
}

// engineGate connects gates to the batched migration engine of the
// database the migration runs on, opening it (and so creating ferry's
// tables) only when a migration queues or finalizes one; status checks
// read the table directly.
type engineGate struct {
	a     *App
	pool  *pgxpool.Pool
	table dbmigrate.TableGate
	// db is the database's name when several are configured
	// (dbTarget.selector), so the commands printed name it (ci_3, --db ci).
	db   string
	once sync.Mutex
	e    *batched.Engine
}

func (g *engineGate) engine(ctx context.Context) (*batched.Engine, error) {
	g.once.Lock()
	defer g.once.Unlock()
	if g.e == nil {
		e, err := g.a.bbmEngineOn(ctx, g.pool, g.db)
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
		g.a.Log.Info("Batched background migration not enqueued because it already exists", zap.Int64("migration_id", res.Migration.ID),
			zap.String("class", b.Class))
	}
	return err
}

// Unqueue implements [dbmigrate.Unqueuer].
func (g *engineGate) Unqueue(ctx context.Context, b dbmigrate.BBM, v dbmigrate.Version) (bool, error) {
	e, err := g.engine(ctx)
	if err != nil {
		return false, err
	}
	m, err := e.DeleteQueued(ctx, b.Class, b.Table, b.Column, b.Args, string(v))
	return m != nil, err
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
	// Named: with several databases a bare id is another database's.
	return unregisteredNote(m) + "\n\n\t" + g.a.markFinishedCommand(g.db, m)
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

// maxVersionArg bounds a version typed on the command line: Rails' are 14
// digits (a timestamp), Sourcegraph's 10. A typo's extra digits would
// otherwise be recorded (mark-complete) as the newest version there is and
// stand in every downto's way.
const maxVersionArg = 20

func parseVersionArg(s string) (dbmigrate.Version, error) {
	v, err := dbmigrate.ParseVersion(s)
	if err != nil {
		return "", Usage(err)
	}
	if len(v) > maxVersionArg {
		return "", Usagef("%w: %q has %d digits, more than a version has (at most %d; e.g. 20151103134857)", dbmigrate.ErrBadVersion, s, len(v), maxVersionArg)
	}
	return v, nil
}

func printPlan(ctx context.Context, w io.Writer, mr *dbmigrate.Migrator, p *dbmigrate.Plan, est *planEstimator) {
	if len(p.Migrations) == 0 {
		fmt.Fprintln(w, "Nothing to do (dry run).")
		return
	}
	fmt.Fprintf(w, "Dry run: would run %d migration(s) %s, in this order:\n", len(p.Migrations), p.Direction)
	var queued []planQueued // by the files before: not in the database yet
	for _, m := range p.Migrations {
		sc, file := m.Up, m.UpFile
		if p.Direction == "down" {
			sc, file = m.Down, m.DownFile
		}
		how := "in a transaction"
		if sc.NoTransaction {
			how = "outside a transaction, statement by statement"
		}
		fmt.Fprintf(w, "\n== %s %s (%s, %s) ==\n", m.Version, m.Name, file, how)
		for _, b := range sc.Require {
			note, skipped := gateNote(ctx, mr, b, queuedBy(queued, b))
			fmt.Fprintf(w, "-- requires finished batched background migration: %s %s %s %s (%s)\n", b.Class, b.Table, b.Column, b.Args, note)
			if !skipped { // a gate that is passed over has nothing to run
				fmt.Fprint(w, est.line(ctx, b))
			}
		}
		if sc.NoTransaction {
			for i, s := range sc.Statements() {
				fmt.Fprintf(w, "-- statement %d\n%s;\n", i+1, s)
			}
		} else {
			fmt.Fprintln(w, strings.TrimRight(sc.SQL, "\n"))
		}
		for _, b := range sc.Queue {
			fmt.Fprintf(w, "-- then queues batched background migration: %s %s %s %s\n", b.Class, b.Table, b.Column, b.Args)
			fmt.Fprint(w, est.line(ctx, b))
			if p.Direction == "up" {
				queued = append(queued, planQueued{b, string(m.Version) + "_" + m.Name})
			}
		}
	}
}

// planQueued is a batched migration an earlier file of a dry run's plan
// queues, and that file.
type planQueued struct {
	bbm dbmigrate.BBM
	by  string
}

// queuedBy names the earlier file of the plan that queues b, "" if none.
func queuedBy(queued []planQueued, b dbmigrate.BBM) string {
	for _, q := range queued {
		if batched.SameConfig(batched.MigrationConfig(q.bbm), batched.MigrationConfig(b)) {
			return q.by
		}
	}
	return ""
}

// gateNote says what a require-bbm gate would do now, and whether migrate
// passes it over (never queued); queuedBy is the earlier file of the run
// that queues b, if one does.
func gateNote(ctx context.Context, m *dbmigrate.Migrator, b dbmigrate.BBM, queuedBy string) (string, bool) {
	status, found, err := m.GateStatus(ctx, b)
	switch {
	case err != nil:
		return "status unknown: " + err.Error(), false
	case !found && queuedBy != "":
		return "queued by " + queuedBy + " earlier in this run: migrate would stop here until it is finished; finalize it then, or use --finalize", false
	case !found:
		return "never queued in this database: migrate warns and continues", true
	case status == "finished" || status == "finalized":
		return "it is '" + status + "'", false
	}
	return "it is '" + status + "': migrate would stop here; finalize it first or use --finalize", false
}

func dbMigrateCmd(a *App, f *dbFlags) *cobra.Command {
	var to, target string
	var dry, finalize bool
	cmd := &cobra.Command{
		Use:     "migrate",
		Aliases: []string{"up", "upto"},
		Short:   "Apply pending migrations (all, or up to --to VERSION); every database without --db",
		Long: `Apply pending migrations, in version order, up to and including --to.

Without --db every configured database is migrated, main first (as
Sourcegraph's "up -db=all"); a database that fails stops only its own
migrations. "up" and "upto" are Sourcegraph's names for it ("upto" needs
-target).`,
		Example: `  ferry db migrate
  ferry db migrate --to 20240101120000 --dry-run
  ferry db migrate --finalize --lock-timeout 30s
  ferry db migrate --db ci
  ferry db up -db=all
  ferry db upto -db=frontend -target=1528395968`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if cmd.Flags().Changed("to") && cmd.Flags().Changed("target") {
				return Usagef("--to and --target are the same flag; give one")
			}
			if cmd.Flags().Changed("target") {
				to = target
			}
			if cmd.CalledAs() == "upto" && !cmd.Flags().Changed("target") && !cmd.Flags().Changed("to") {
				return Usagef("upto needs -target=VERSION (or use up / migrate for every pending migration)")
			}
			var tv dbmigrate.Version
			// An explicit --to "" (an unset shell variable) must not mean "all".
			if to != "" || cmd.Flags().Changed("to") || cmd.Flags().Changed("target") {
				v, err := parseTargetArg(to)
				if err != nil {
					return err
				}
				tv = v
			}
			ts, err := a.dbTargets(cmd, f, selAll)
			if err != nil {
				return err
			}
			if tv != "" && len(ts) > 1 {
				// A version belongs to one database's history.
				return Usagef("--to %s names a version of one database; add --db NAME (configured databases are %s)", tv, strings.Join(a.Cfg.DatabaseNames(), ", "))
			}
			return a.eachDB(ts, func(t dbTarget) error {
				m, err := a.migrator(ctx, f, t, finalize)
				if err != nil {
					return err
				}
				if dry {
					p, err := m.PlanUp(ctx, tv)
					if err != nil {
						return dbErr(err)
					}
					if p.Dirty != nil {
						fmt.Fprintf(t.out, "Note: migrate would refuse: %v\n\n", p.Dirty)
					}
					printPlan(ctx, t.out, m, p, a.planEstimates(ctx, f, t))
					if p.Dirty != nil {
						return No(errSilent) // as the run would: a gate on --dry-run must not pass
					}
					return nil
				}
				done, err := m.Migrate(ctx, tv)
				if err != nil {
					return dbErr(err)
				}
				if len(done) == 0 {
					fmt.Fprintln(t.out, "Nothing to migrate: the database is up to date.")
				} else {
					fmt.Fprintf(t.out, "Applied %d migration(s).\n", len(done))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "stop after this version (inclusive)")
	cmd.Flags().StringVar(&target, "target", "", "same as --to (Sourcegraph's -target)")
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
			ts, err := a.dbTargets(cmd, f, selAll)
			if err != nil {
				return err
			}
			if asJSON && ts[0].named {
				return a.multiStatusJSON(ctx, f, ts)
			}
			return a.eachDB(ts, func(t dbTarget) error {
				st, answer := a.readStatus(ctx, f, t)
				if st == nil {
					return answer
				}
				if asJSON {
					if err := a.PrintJSON(st); err != nil {
						return err
					}
				} else {
					printStatus(t, st)
				}
				return answer
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

// readStatus reads t's status and the command's answer for it
// (statusExit); st is nil when it could not be read, answer then says why.
// Outside the application's folder st is what the database knows, with
// PendingUnknown, and unless it is dirty the answer names the missing
// directory: without the files nothing says whether a migration is pending.
func (a *App) readStatus(ctx context.Context, f *dbFlags, t dbTarget) (st *dbmigrate.Status, answer error) {
	m, noDir, err := a.statusMigrator(ctx, f, t)
	if err != nil {
		return nil, err
	}
	if st, err = m.Status(ctx); err != nil {
		return nil, dbErr(err)
	}
	st.PendingUnknown = noDir != nil
	if noDir != nil && !st.Dirty {
		return st, noDir
	}
	return st, statusExit(st)
}

// statusMigrator is status's migrator. Run outside the application's
// folder, without the default directory, status still reads what the
// database knows (a dirty migration answers "no" without any file), and
// noDir is the error to give when that is all it can tell.
func (a *App) statusMigrator(ctx context.Context, f *dbFlags, t dbTarget) (m *dbmigrate.Migrator, noDir, err error) {
	m, err = a.migrator(ctx, f, t, false)
	if err == nil || t.dirGiven {
		return m, nil, err
	}
	if _, serr := os.Stat(t.dir); !errors.Is(serr, fs.ErrNotExist) {
		return nil, nil, err
	}
	m, rerr := a.recordMigrator(ctx, f, t)
	if rerr != nil {
		return nil, nil, rerr
	}
	return m, err, nil
}

// selector is t's name when commands must name it (--db NAME, ci_3): with
// several databases configured; "" otherwise.
func (t dbTarget) selector() string {
	if t.named {
		return t.Name
	}
	return ""
}

// command is a `ferry db` command line on t's database (--db when several
// are configured).
func (t dbTarget) command(verb string, args ...string) string {
	return dbmigrate.Command(t.selector(), verb, args...)
}

// printStatus prints one database's status table to t.out.
func printStatus(t dbTarget, st *dbmigrate.Status) {
	out := t.out
	if d := st.DirtyMigration; d != nil {
		// First, on one line, so nobody reads past it.
		what := "failed with: " + oneLine(d.Error)
		if d.Died {
			what = "was interrupted: its migrator died (started " + d.StartedAt.UTC().Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(out, "DIRTY: migration %s_%s (%s) %s; it ran outside a transaction, so the database may be half-migrated and `%s` refuses to run. Ways out: %s; or %s.\n\n",
			d.Version, d.Name, d.Direction, what, t.command("migrate"), d.WaysOut[0], d.WaysOut[1])
	}
	fmt.Fprintf(out, "%-16s %-12s %-22s %s\n", "VERSION", "STATE", "WHEN", "NAME")
	for _, ms := range st.Migrations {
		when := ""
		if ms.AppliedAt != nil {
			when = ms.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
		} else if la := ms.LastAttempt; la != nil && ms.State != "pending" {
			// When it failed, went dirty or started running; a pending
			// one's last attempt is its revert, which reads as applied.
			when = la.StartedAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		name := ms.Name
		if !ms.HasFile {
			name += " (no file in " + t.dir + ")"
		}
		fmt.Fprintf(out, "%-16s %-12s %-22s %s\n", ms.Version, ms.State, when, name)
		if la := ms.LastAttempt; la != nil && (ms.State == "failed" || ms.State == "dirty") {
			fmt.Fprintf(out, "%16s error: %s\n", "", oneLine(la.Error))
		}
	}
	if st.PendingUnknown {
		fmt.Fprintf(out, "\nCurrent version: %s; pending unknown (no migrations directory %s).\n", st.Current, t.dir)
	} else {
		fmt.Fprintf(out, "\nCurrent version: %s; %d pending.\n", st.Current, st.Pending)
	}
	if st.Holder != nil {
		fmt.Fprintf(out, "A migrator is running: %s\n", st.Holder)
	}
	if d := st.DirtyMigration; d != nil {
		fmt.Fprintf(out, "The database is DIRTY at migration %s_%s: see the first line.\n", d.Version, d.Name)
	}
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
	var target, release string
	cmd := &cobra.Command{
		Use:   "downto VERSION | downto --to-release DIR",
		Short: "Revert every migration newer than VERSION, or every one an older release does not know",
		Long: `Runs the down files of every applied migration newer than VERSION, newest
first; VERSION itself stays applied (as Rails' "db:migrate VERSION=x" going
down, goose down-to and Sourcegraph's downto). A dirty migration newer than
VERSION is reverted too: this is the way out of a half-applied
no-transaction migration, so down files should tolerate a partial state
(IF EXISTS). Nothing runs unless every needed down file exists and none is
marked "-- ferry:irreversible". -target=VERSION (Sourcegraph) is the same.

With several databases configured, --db NAME is required: a version
belongs to one database's history.

--to-release DIR is the rollback after going back to an older release's
code: it reverts, newest first, every applied migration that the older
release's migrations directory does not hold, with THIS release's down
files ("make the database what the old code expects"). DIR is the older
release's migrations: for each database ferry uses DIR/NAME if it exists
(Sourcegraph's migrations/frontend, migrations/codeintel, ...), else
DIR/<its migrations directory> (a release tree holding db/migrate), else,
with one database, DIR itself. Both ferry's files and Sourcegraph's
<version>/up.sql directories are read (only which versions exist).
Before anything runs, the plan of every selected database is printed,
with each step that cannot be reverted and why (this release has no files
for it, no down file, or irreversible); if any step of any database cannot
be reverted, or a database cannot be reached, nothing is reverted anywhere
(exit 1): half a rollback leaves a schema neither release expects. With
several databases, --db NAME or --db all is required.`,
		Example: `  ferry db downto 20240101120000 --dry-run
  ferry db downto 0
  ferry db downto -db=frontend -target=1528395968
  ferry db downto --to-release /srv/app-v3.36.0/migrations --db all --dry-run`,
		Args: func(cmd *cobra.Command, args []string) error {
			n := 1
			if cmd.Flags().Changed("target") || cmd.Flags().Changed("to-release") {
				n = 0
			}
			switch {
			case n == 0 && len(args) > 0:
				return Usagef("downto takes no VERSION argument with -target or --to-release, got %q", args)
			case n == 1 && len(args) == 0:
				return Usagef("downto needs the version to go back to: downto VERSION (or -target=VERSION), or --to-release DIR " +
					"for what an older release's migrations directory does not know; `ferry db status` lists the versions")
			}
			return cobra.ExactArgs(n)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if cmd.Flags().Changed("to-release") {
				if cmd.Flags().Changed("target") {
					return Usagef("give -target or --to-release, not both")
				}
				return a.downToRelease(cmd, f, release, dry)
			}
			v := target
			if len(args) == 1 {
				v = args[0]
			}
			tv, err := parseTargetArg(v)
			if err != nil {
				return err
			}
			ts, err := a.dbTargets(cmd, f, selOne)
			if err != nil {
				return err
			}
			return a.eachDB(ts, func(t dbTarget) error {
				m, err := a.migrator(ctx, f, t, false)
				if err != nil {
					return err
				}
				if dry {
					p, err := m.PlanDown(ctx, tv)
					if err != nil {
						return dbErr(err)
					}
					printPlan(ctx, t.out, m, p, nil)
					return nil
				}
				done, err := m.DownTo(ctx, tv)
				if err != nil {
					return dbErr(err)
				}
				if len(done) == 0 {
					fmt.Fprintf(t.out, "Nothing to revert: no migration newer than %s is applied.\n", tv)
				} else {
					fmt.Fprintf(t.out, "Reverted %d migration(s); now at %s.\n", len(done), tv)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the plan and SQL, change nothing")
	cmd.Flags().StringVar(&target, "target", "", "the VERSION argument (Sourcegraph's -target)")
	cmd.Flags().StringVar(&release, "to-release", "", "revert every applied migration the older release's migrations directory DIR does not hold")
	return cmd
}

// parseTargetArg is parseVersionArg for --to/-target, which Sourcegraph
// allows to hold several comma-separated versions (a non-linear history).
func parseTargetArg(s string) (dbmigrate.Version, error) {
	if strings.Contains(s, ",") {
		return "", Usagef("target %q: ferry's migrations are linear, give one version (the newest of them)", s)
	}
	return parseVersionArg(s)
}

func dbMarkCompleteCmd(a *App, f *dbFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-complete VERSION | mark_migration_complete[VERSION]",
		Short: "Record VERSION as applied without running it (GitLab's mark_migration_complete)",
		Long: `Record VERSION in schema_migrations without running it, as GitLab's
gitlab:db:mark_migration_complete[VERSION] does (that form is accepted too).
It needs no migrations directory; when --dir exists and has no file for
VERSION it warns and records it anyway.

With several databases and no --db it records VERSION on every one, as
GitLab's task does on a multi-database install, one line per database;
mark_migration_complete:ci[VERSION] (or --db ci) records it on ci only.`,
		Example: `  ferry db mark-complete 20151103134857
  ferry db mark_migration_complete[20151103134857]
  ferry db mark-complete 20151103134857 --db ci
  ferry db mark_migration_complete:ci[20151103134857]`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.markComplete(cmd, f, args[0])
		},
	}
}

// markComplete records the version arg (or GitLab's rake form of it) on
// the databases --db selects, every one without it.
func (a *App) markComplete(cmd *cobra.Command, f *dbFlags, arg string) error {
	ctx := cmd.Context()
	v, rakeDB, err := markCompleteVersion(arg)
	if err != nil {
		return err
	}
	if rakeDB != "" {
		if names := a.Cfg.DatabaseNames(); len(names) == 1 && names[0] == config.DefaultDatabase && rakeDB != names[0] {
			rc, _ := parseRake(arg)
			return rc.checkDB() // ferry's one-database message
		}
		if f.db != "" && f.db != rakeDB {
			return Usagef("%s names database %s, but --db says %s", arg, rakeDB, f.db)
		}
		f.db = rakeDB
	}
	ts, err := a.dbTargets(cmd, f, selAll)
	if err != nil {
		return err
	}
	return a.eachDB(ts, func(t dbTarget) error {
		m, err := a.recordMigrator(ctx, f, t)
		if err != nil {
			return err
		}
		a.warnNoFile(m, t, v)
		already, err := m.MarkComplete(ctx, v)
		if err != nil {
			return dbErr(err)
		}
		// GitLab's lines, naming the database by its configured
		// name (main, ci), as GitLab's each_database does.
		db := t.Name
		if already {
			fmt.Fprintf(a.Out, "Migration version '%s' is already marked complete on database %s\n", v, db)
		} else {
			fmt.Fprintf(a.Out, "Successfully marked '%s' as complete on database %s\n", v, db)
		}
		return nil
	})
}

// markCompleteVersion reads VERSION, also in GitLab's rake form
// (mark_migration_complete[VERSION], with or without gitlab:db: and with
// a database suffix, :main or :ci, which it returns).
func markCompleteVersion(arg string) (dbmigrate.Version, string, error) {
	db := ""
	if rc, ok := parseRake(arg); ok {
		if rc.Task != "mark_migration_complete" || len(rc.Args) != 1 {
			return "", "", Usagef("expected VERSION or mark_migration_complete[VERSION], got %q", arg)
		}
		arg, db = rc.Args[0], rc.DB
	}
	v, err := parseVersionArg(arg)
	if err != nil {
		return "", "", err
	}
	if v == "0" {
		return "", "", Usagef("Must give a version argument that is a non-zero integer")
	}
	return v, db, nil
}

// warnNoFile warns when the migrations directory exists but has no file
// for v: a typo in a version is otherwise recorded silently.
func (a *App) warnNoFile(m *dbmigrate.Migrator, t dbTarget, v dbmigrate.Version) {
	if _, err := os.Stat(t.dir); err != nil {
		return
	}
	for _, mg := range m.Migrations() {
		if mg.Version == v {
			return
		}
	}
	on := ""
	if t.named {
		on = " (database " + t.Name + ")"
	}
	fmt.Fprintf(a.Err, "warning: %s has no migration file for version %s%s; recording it anyway\n", t.dir, v, on)
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
			ts, err := a.dbTargets(cmd, f, selOne)
			if err != nil {
				return err
			}
			return a.eachDB(ts, func(t dbTarget) error {
				m, err := a.recordMigrator(ctx, f, t)
				if err != nil {
					return err
				}
				d, err := m.Repair(ctx, v)
				if err != nil {
					return dbErr(err)
				}
				state := "pending: the next `" + t.command("migrate") + "` runs it again (or `" + t.command("mark-complete", string(d.Version)) + "` if you applied it by hand)"
				if d.Applied {
					state = "applied"
				}
				fmt.Fprintf(t.out, "Cleared the dirty state of migration %s_%s (%s attempt #%d). It is %s.\n", d.Version, d.Name, d.Direction, d.ID, state)
				return nil
			})
		},
	}
}

func dbBackupCmd(a *App, f *dbFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "pg_dump the whole database (custom format) to FILE, with FILE.meta.json naming the database",
		Long: `pg_dump the whole database (custom format) to FILE; FILE.meta.json records
the database (ferry's name for it, e.g. main or ci, and PostgreSQL's), the
cluster, size and SHA-256, which "ferry db restore" checks. With several
databases configured, --db NAME says which one.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ts, err := a.dbTargets(cmd, f, selOne)
			if err != nil {
				return err
			}
			return a.eachDB(ts, func(t dbTarget) error {
				pool, err := a.dbPool(ctx, f, t)
				if err != nil {
					return dbErr(err)
				}
				report, end := a.tableProgress("pg_dump " + args[0])
				meta, err := dbmigrate.Backup(ctx, pool, args[0], dbmigrate.BackupOptions{Logger: a.Log, PgBin: f.pgBin, Progress: report, Name: t.Name})
				end(err == nil)
				if err != nil {
					return dbErr(err)
				}
				fmt.Fprintf(t.out, "Backed up database %s (%d tables/views/sequences, %d bytes) to %s; metadata in %s\n",
					meta.Database, meta.Relations, meta.Size, args[0], dbmigrate.MetaPath(args[0]))
				if meta.Previous != "" {
					removed := ""
					if meta.PreviousRemoved {
						removed = "; the one before it was removed"
					}
					fmt.Fprintf(t.out, "The backup that was at %s before is kept as %s (one previous copy is kept%s).\n", args[0], meta.Previous, removed)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&f.pgBin, "pg-bin", "", "directory of pg_dump/pg_restore (default: matching the server version)")
	return cmd
}

// warnConnected warns that ferry processes use the database a restore
// replaces: their tables change under them.
func (a *App) warnConnected(res *dbmigrate.RestoreResult, db string) {
	names := make([]string, len(res.Connected))
	for i, s := range res.Connected {
		names[i] = s.String()
	}
	then := "the restore replaces their tables under them; stop those workers (or run `ferry bbm pause-all" + a.dbFlag(db) + "`) first, or re-run with --yes to restore anyway"
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
		Long: `Restores a "ferry db backup" into the configured database (with several
configured, --db NAME; a backup whose FILE.meta.json names another
database, e.g. ci's into main, is refused unless --force-other-database).

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
			ts, err := a.dbTargets(cmd, f, selOne)
			if err != nil {
				return err
			}
			return a.eachDB(ts, func(t dbTarget) error { return a.restoreOne(ctx, f, t, args[0], yes, force) })
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "really drop and restore")
	cmd.Flags().BoolVar(&force, "force-other-database", false, "restore a backup taken from another database")
	cmd.Flags().StringVar(&f.pgBin, "pg-bin", "", "directory of pg_dump/pg_restore/psql (default: matching the server version)")
	return cmd
}

// restoreOne restores file into t.
func (a *App) restoreOne(ctx context.Context, f *dbFlags, t dbTarget, file string, yes, force bool) error {
	pool, err := a.dbPool(ctx, f, t)
	if err != nil {
		return dbErr(err)
	}
	report, end := a.tableProgress("restore " + file)
	res, err := dbmigrate.Restore(ctx, pool, file, dbmigrate.BackupOptions{Logger: a.Log, PgBin: f.pgBin,
		Yes: yes, ForceOtherDatabase: force, Name: t.Name, LockTimeout: f.lockTimeout, Progress: report})
	end(err == nil)
	if errors.Is(err, os.ErrNotExist) {
		return Usage(err)
	}
	// The checks passed: restored, or a plan without --yes.
	checked := res != nil && (err == nil || errors.Is(err, dbmigrate.ErrNotConfirmed))
	if checked && len(res.Connected) > 0 {
		a.warnConnected(res, t.Name)
	}
	if checked && res.Meta == nil {
		fmt.Fprintf(a.Err, "warning: %s not found: the backup's size and SHA-256 were not checked (pg_restore read it to the end, and its header names the database).\n",
			dbmigrate.MetaPath(file))
	}
	if checked {
		verb := "Dropped"
		if !res.Restored {
			verb = "Would drop"
		}
		if len(res.Dropped) == 0 {
			fmt.Fprintf(t.out, "%s nothing: every object of database %s is in the backup.\n", verb, res.Database)
		}
		for _, r := range res.Dropped {
			fmt.Fprintf(t.out, "%s %s (not in the backup)\n", verb, r)
		}
	}
	if errors.Is(err, dbmigrate.ErrNotConfirmed) {
		return Usagef("restore replaces every object of database %s with the backup's; re-run with --yes to do it", res.Database)
	}
	if err != nil {
		return dbErr(err)
	}
	fmt.Fprintf(t.out, "Restored %s into database %s.\n", file, res.Database)
	for _, table := range dbmigrate.RecordTables {
		if n, ok := res.Kept[table]; ok {
			fmt.Fprintf(t.out, "Kept the record of the time since the backup: %s had %d rows before the restore; those the backup lacks are back.\n", table, n)
		}
	}
	return nil
}
