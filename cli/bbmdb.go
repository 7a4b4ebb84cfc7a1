package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// More than one database (GitLab's main and ci): each has its own batched
// migration tables, limit, pause switch and pacing clock, so every bbm
// command works on one engine per database. Reads cover every database
// (or --db's) and name them when more than one is configured; a write
// acts on one database, named by --db, the id's prefix (ci_10) or the
// rake task's suffix (finalize:ci[...]), and is refused without one when
// several are configured, as GitLab's rake tasks refuse.

// ErrAmbiguousDatabase: a write names no database while several are
// configured. Its text is GitLab's rake tasks' refusal.
var ErrAmbiguousDatabase error = gitlabText("Please specify the database")

// gitlabText is an error whose text is GitLab's, capital letter included.
type gitlabText string

func (g gitlabText) Error() string { return string(g) }

// bbmDBFlags adds --db and its GitLab spelling --database to the bbm group.
func bbmDBFlags(a *App, root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.Var((*bbmDBValue)(a), "db", "database to read or change (a name from databases:, main is DATABASE_URL's); reads default to all")
	pf.Var((*bbmDBValue)(a), "database", "same as --db")
}

// bbmDBValue is --db: an empty value is refused, so an unset shell
// variable (--db "$DB") cannot widen a command to every database.
type bbmDBValue App

func (v *bbmDBValue) String() string { return v.bbmDB }
func (v *bbmDBValue) Type() string   { return "NAME" }
func (v *bbmDBValue) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("empty database name (give NAME, or all)")
	}
	v.bbmDB = s
	return nil
}

// multiDB reports whether more than one database is configured: output
// then names the database of every migration.
func (a *App) multiDB() bool { return len(a.Cfg.DatabaseList()) > 1 }

// bbmEngine is the engine of the default database (main).
func (a *App) bbmEngine(ctx context.Context) (*batched.Engine, error) {
	return a.bbmEngineFor(ctx, config.DefaultDatabase)
}

// bbmEngineFor opens database name, upgrades ferry's tables there and
// returns its engine (one per database and command).
func (a *App) bbmEngineFor(ctx context.Context, name string) (*batched.Engine, error) {
	if e := a.engines[name]; e != nil {
		return e, nil
	}
	pool, err := a.DBNamed(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := ferryschema.Ensure(ctx, pool, a.Log); err != nil {
		if a.multiDB() {
			err = fmt.Errorf("database %s: %w", name, err)
		}
		return nil, err
	}
	e := batched.NewEngine(pool, batched.Config{Logger: a.Log, Registry: a.Reg.BBM, TargetBatchDuration: a.Cfg.BBM.TargetBatchDuration,
		Identity: "ferry-cli:" + strconv.Itoa(os.Getpid()), Health: bbmHealth(a), Database: a.hintDB(name)})
	a.OnClose(e.Close)
	if a.engines == nil {
		a.engines = map[string]*batched.Engine{}
	}
	a.engines[name] = e
	return e, nil
}

// bbmReadDBs are the databases a read command covers: --db's, default all.
func (a *App) bbmReadDBs() ([]string, error) {
	dbs, err := a.Cfg.SelectDatabases(a.bbmDB)
	if err != nil {
		return nil, Usage(err)
	}
	if len(dbs) == 0 {
		return nil, Usage(a.Cfg.RequireDatabase())
	}
	names := make([]string, 0, len(dbs))
	for _, d := range dbs {
		names = append(names, d.Name)
	}
	return names, nil
}

// bbmWriteDB is the one database a write acts on: the one its reference
// names (refDB, from ci_10 or finalize:ci[...]), --db's, or the only one
// configured. what is the command as typed and ways how to name one, for
// the refusal.
func (a *App) bbmWriteDB(refDB, what, ways string) (string, error) {
	known := a.Cfg.DatabaseNames()
	flag := a.bbmDB
	if flag == "all" {
		return "", Usagef("%s acts on one database; --db all names %s", what, strings.Join(known, ", "))
	}
	if flag != "" {
		if _, ok := a.Cfg.Database(flag); !ok {
			return "", Usage(&config.UnknownDatabaseError{Name: flag, Known: known})
		}
	}
	switch {
	case refDB != "" && flag != "" && refDB != flag:
		return "", Usagef("%s names database %s, but --db says %s", what, refDB, flag)
	case refDB != "":
		if err := checkDBName(refDB, what, known); err != nil {
			return "", err
		}
		return refDB, nil
	case flag != "":
		return flag, nil
	case len(known) == 1:
		return known[0], nil
	case len(known) == 0:
		return config.DefaultDatabase, nil // DB reports what is missing
	}
	return "", Usage(ambiguous(what, known, ways))
}

// bbmWriteDBs are the databases a cluster-wide write (pause-all,
// resume-all, set max-running) changes: --db's (all allowed), or the only
// one configured.
func (a *App) bbmWriteDBs(what string) ([]string, error) {
	known := a.Cfg.DatabaseNames()
	if a.bbmDB == "" && len(known) > 1 {
		return nil, Usage(ambiguous(what, known, "add --db NAME, or --db all for every one"))
	}
	return a.bbmReadDBs()
}

// ambiguous is GitLab's refusal of a task that names no database on a
// multi-database install, with the ways to name one.
func ambiguous(what string, known []string, ways string) error {
	return fmt.Errorf("%w: %s would act on one of several databases (%s); %s", ErrAmbiguousDatabase, what, strings.Join(known, ", "), ways)
}

// refWays says how to name the database of a command cmd on ref: --db,
// or the id as GitLab writes it (main_3), or the rake task with the
// database (finalize:ci[...]).
func refWays(ref bbmRef, cmd string, known []string) string {
	flag := "add --db NAME"
	if len(known) == 1 {
		flag = "add --db " + known[0]
	}
	switch task := strings.ReplaceAll(cmd, "-", "_"); {
	case ref.cfg == nil && ref.id > 0:
		refs := make([]string, len(known))
		for i, k := range known {
			refs[i] = batched.Ref(k, ref.id)
		}
		return fmt.Sprintf("%s, or write the id as %s", flag, strings.Join(refs, " or "))
	case rakeCommands["bbm"][task] != "":
		return fmt.Sprintf("%s, or write the task as %s:%s[...]", flag, task, known[0])
	}
	return flag
}

// refWhat is the command on ref as the operator typed it, for messages:
// a rake form stands alone (finalize[...], not "finalize finalize[...]").
func refWhat(ref bbmRef, cmd string) string {
	if _, ok := parseRake(ref.raw); ok || ref.raw == "" {
		return cmp.Or(ref.raw, cmd)
	}
	return cmd + " " + ref.raw
}

// checkDBName refuses a database name that is not configured; with only
// the default one configured it says so as it always has.
func checkDBName(db, what string, known []string) error {
	for _, k := range known {
		if k == db {
			return nil
		}
	}
	if len(known) <= 1 {
		return (rakeCall{DB: db, raw: what}).checkDB()
	}
	return Usagef("%w: %s names database %q; configured databases are %s", ErrOtherDatabase, what, db, strings.Join(known, ", "))
}

// dbRef is how a listing names a migration: its id, or db_id (GitLab's
// form) when several databases are configured.
func (a *App) dbRef(db string, id int64) string {
	if a.multiDB() {
		return batched.Ref(db, id)
	}
	return batched.Ref("", id)
}

// finalizeCommand is m's finalize command, naming its database when
// several are configured (without it, finalize is refused there).
func (a *App) finalizeCommand(db string, m *batched.Migration) string {
	cmd := m.FinalizeCommand()
	if a.multiDB() {
		cmd = strings.Replace(cmd, "ferry bbm finalize ", "ferry bbm finalize --db "+db+" ", 1)
	}
	return cmd
}

// markFinishedCommand is mark-finished for m, with its database's prefix
// when several are configured.
func (a *App) markFinishedCommand(db string, m *batched.Migration) string {
	return fmt.Sprintf("ferry bbm mark-finished %s --yes", a.dbRef(db, m.ID))
}

// dbErr names the database of a failed read when several are configured.
func (a *App) dbErr(db string, err error) error {
	if err == nil || !a.multiDB() || strings.Contains(err.Error(), "database "+db) {
		return err
	}
	return fmt.Errorf("database %s: %w", db, err)
}

// dbInfo is a migration with its database, for --json.
type dbInfo struct {
	Database string `json:"database"`
	*batched.MigrationInfo
}

// bbmList reads database db's migrations and settings.
func (a *App) bbmList(ctx context.Context, db string) ([]*batched.MigrationInfo, batched.Settings, error) {
	e, err := a.bbmEngineFor(ctx, db)
	if err != nil {
		return nil, batched.Settings{}, err
	}
	ms, err := e.List(ctx)
	if err != nil {
		return nil, batched.Settings{}, err
	}
	settings, err := e.GetSettings(ctx)
	return ms, settings, err
}

// dbFlag is " --db NAME" when several databases are configured, for the
// commands ferry prints.
func (a *App) dbFlag(db string) string {
	if a.multiDB() {
		return " --db " + db
	}
	return ""
}

// writeLine is a changed migration's status line, naming its database
// when several are configured.
func (a *App) writeLine(db string, m *batched.Migration) string {
	if a.multiDB() {
		return m.StatusLine() + " (" + a.dbRef(db, m.ID) + ")"
	}
	return m.StatusLine()
}

// bbmWriteEngine is the engine of the one database a write on ref acts on.
func (a *App) bbmWriteEngine(ctx context.Context, ref bbmRef, cmd string) (*batched.Engine, string, error) {
	db, err := a.bbmWriteDB(ref.db, refWhat(ref, cmd), refWays(ref, cmd, a.Cfg.DatabaseNames()))
	if errors.Is(err, ErrAmbiguousDatabase) && ref.cfg != nil {
		// Still refused, as GitLab does; but when only one database has
		// this configuration, the ways name that one.
		if in, ferr := a.bbmFind(ctx, ref, cmd); ferr == nil {
			err = Usage(ambiguous(refWhat(ref, cmd), a.Cfg.DatabaseNames(),
				"only "+in+" has this migration: "+refWays(ref, cmd, []string{in})))
		}
	}
	if err != nil {
		return nil, "", err
	}
	e, err := a.bbmEngineFor(ctx, db)
	return e, db, err
}

// bbmFind is the database a read of one migration (show) looks in: the
// one ref or --db names, the only one configured, or else the one database
// that has it (a bare id may exist in several: then it is ambiguous).
func (a *App) bbmFind(ctx context.Context, ref bbmRef, cmd string) (string, error) {
	what := refWhat(ref, cmd)
	if ref.db != "" || a.bbmDB != "" || !a.multiDB() {
		return a.bbmWriteDB(ref.db, what, refWays(ref, cmd, a.Cfg.DatabaseNames()))
	}
	var found []string
	var failed []error
	for _, db := range a.Cfg.DatabaseNames() {
		e, err := a.bbmEngineFor(ctx, db)
		if err == nil {
			_, err = ref.resolve(ctx, e)
			if err == nil && ref.cfg == nil {
				_, err = e.Get(ctx, ref.id)
				err = bbmErr(err)
			}
		}
		var ee *ExitError
		switch {
		case err == nil:
			found = append(found, db)
		case errors.As(err, &ee) && ee.Code == 2 && errors.Is(err, batched.ErrNotFound):
		default:
			failed = append(failed, a.dbErr(db, err))
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		refs := make([]string, len(found))
		for i, db := range found {
			refs[i] = db
			if ref.cfg == nil {
				refs[i] = a.dbRef(db, ref.id)
			}
		}
		return "", Usagef("%w: %s is in more than one database (%s); add --db NAME or write the id as %s",
			ErrAmbiguousDatabase, what, strings.Join(found, ", "), strings.Join(refs, " or "))
	case len(failed) > 0:
		return "", errors.Join(failed...)
	}
	return "", Usagef("%s: no such migration in %s (%w)", what, strings.Join(a.Cfg.DatabaseNames(), ", "), batched.ErrNotFound)
}

// bbmUnfinished reads database db's unfinished migrations; an error names
// the database when several are configured.
func (a *App) bbmUnfinished(ctx context.Context, db string) ([]*batched.MigrationInfo, error) {
	e, err := a.bbmEngineFor(ctx, db)
	if err != nil {
		return nil, a.dbErr(db, err)
	}
	ms, err := e.Unfinished(ctx)
	return ms, a.dbErr(db, err)
}

// dbLabel prefixes a line with its database when several are configured.
func (a *App) dbLabel(db string) string {
	if a.multiDB() {
		return db + ": "
	}
	return ""
}

// hintDB is the database name an engine's printed commands carry: db when
// several databases are configured, else "" (ids stay bare).
func (a *App) hintDB(db string) string {
	if a.multiDB() {
		return db
	}
	return ""
}
