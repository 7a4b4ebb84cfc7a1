package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/dbmigrate"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// `ferry db` on several databases (GitLab's main and ci, Sourcegraph's
// frontend, codeintel and codeinsights). Each database has its own
// migrations directory, pool, migration lock and batched migration
// engine; commands run on them one after the other, main first, and one
// that fails (or is down) does not stop the others.

// dbTarget is one database a `ferry db` command works on.
type dbTarget struct {
	config.Database
	// dir is its migrations directory: databases.NAME.migrations, else --dir.
	dir string
	// dirGiven: the directory was named (config or --dir), so it must exist.
	dirGiven bool
	// named: several databases are configured (or the only one is not
	// main), so every output line names this one.
	named bool
	// out is a.Out, its lines prefixed with "NAME: " when named.
	out io.Writer
}

// dbSelect says which databases a command takes when --db is not given.
type dbSelect int

const (
	// selAll: every configured database (read commands, migrate).
	selAll dbSelect = iota
	// selExplicit: a destructive write; with several databases it needs --db.
	selExplicit
	// selOne: exactly one database (a single file, a single version).
	selOne
)

// dbNamed reports whether output names databases: several are configured,
// or the only one is not DATABASE_URL's main. With DATABASE_URL alone,
// output stays as it was before ferry knew more than one database.
func (a *App) dbNamed() bool {
	names := a.Cfg.DatabaseNames()
	return !(len(names) == 1 && names[0] == config.DefaultDatabase)
}

// pleaseSpecify is GitLab's multi-database refusal, with the names.
func (a *App) pleaseSpecify(cmd *cobra.Command) error {
	return Usagef("Please specify the database: %s works on one database at a time and %d are configured (%s); add --db NAME",
		cmd.CommandPath(), len(a.Cfg.DatabaseNames()), strings.Join(a.Cfg.DatabaseNames(), ", "))
}

// dbTargets resolves --db for cmd.
func (a *App) dbTargets(cmd *cobra.Command, f *dbFlags, sel dbSelect) ([]dbTarget, error) {
	list := a.Cfg.DatabaseList()
	if len(list) == 0 {
		return nil, Usage(a.Cfg.RequireDatabase())
	}
	if f.db == "" && (cmd.Flags().Changed("db") || cmd.Flags().Changed("database")) {
		// An unset shell variable must not mean "every database".
		return nil, Usagef("--db is empty: give a database name or all (configured databases are %s)", strings.Join(a.Cfg.DatabaseNames(), ", "))
	}
	if f.db == "" && sel != selAll && len(list) > 1 {
		return nil, a.pleaseSpecify(cmd)
	}
	ds, err := a.Cfg.SelectDatabases(f.db)
	if err != nil {
		return nil, Usage(err)
	}
	if sel == selOne && len(ds) > 1 {
		return nil, Usagef("%s works on one database at a time, and --db %s names %d; configured databases are %s",
			cmd.CommandPath(), f.db, len(ds), strings.Join(a.Cfg.DatabaseNames(), ", "))
	}
	named := a.dbNamed()
	out := make([]dbTarget, 0, len(ds))
	for _, d := range ds {
		t := dbTarget{Database: d, dir: f.dir, dirGiven: cmd.Flags().Changed("dir"), named: named, out: a.Out}
		if d.Migrations != "" {
			t.dir, t.dirGiven = d.Migrations, true
		}
		if named {
			t.out = &prefixWriter{w: a.Out, prefix: d.Name + ": ", bol: true}
		}
		out = append(out, t)
	}
	return out, nil
}

// eachDB runs fn on every target. Unnamed (DATABASE_URL alone), fn's
// error is the command's. Named, each error is printed on stderr naming
// its database, the others still run, and the exit code is the worst.
func (a *App) eachDB(ts []dbTarget, fn func(t dbTarget) error) error {
	if len(ts) == 1 && !ts[0].named {
		return a.sessionHint(ts[0], fn(ts[0]))
	}
	code := 0
	for _, t := range ts {
		err := a.sessionHint(t, fn(t))
		if err == nil {
			continue
		}
		c := 1
		var ee *ExitError
		if errors.As(err, &ee) {
			c = ee.Code
		} else if errors.Is(err, config.ErrInvalid) {
			c = 2
		}
		if msg := err.Error(); msg != "" {
			// Every line names its database: the errors of several
			// databases follow each other on stderr.
			pw := &prefixWriter{w: a.Err, prefix: "ferry: " + t.Name + ": ", bol: true}
			fmt.Fprintln(pw, msg)
		}
		code = max(code, c)
	}
	if code != 0 {
		return &ExitError{Code: code, Err: errSilent}
	}
	return nil
}

// needsSessionError is dbmigrate.ErrNeedsSession naming the setting that
// fixes it for one database.
type needsSessionError struct{ msg string }

func (e *needsSessionError) Error() string { return e.msg }
func (e *needsSessionError) Unwrap() error { return dbmigrate.ErrNeedsSession }

// sessionHint names, in an ErrNeedsSession, the variable that gives t a
// direct connection, or says that the one given goes through the pooler
// too. It is bad input: exit 2.
func (a *App) sessionHint(t dbTarget, err error) error {
	if !errors.Is(err, dbmigrate.ErrNeedsSession) {
		return err
	}
	const too = " goes through a transaction pooler (PgBouncer) too: point it at PostgreSQL itself, not at PgBouncer"
	var used, how string // the setting in use, and what to do about it
	switch {
	case t.Name != config.DefaultDatabase || a.Cfg.DatabaseURL == "":
		up := strings.ToUpper(t.Name)
		direct, field := config.EnvDatabaseDirectURLPrefix+up, "databases."+t.Name+".direct_url"
		used, how = a.Cfg.FieldName("databases."+t.Name+".url", config.EnvDatabaseURLPrefix+up),
			" goes through a transaction pooler (PgBouncer): set "+direct+" (or "+field+" in the config file) to a direct connection"
		if t.DirectURL != "" {
			used, how = a.Cfg.FieldName(field, direct), too
		}
	// main: the URL in use is the direct one unless --database-url alone
	// named another (cli/db.go).
	case a.Cfg.DatabaseDirectURL != "" && a.Cfg.DatabaseURL == a.Cfg.DatabaseDirectURL:
		used, how = a.Cfg.FieldName(config.KeyDatabaseURL, config.EnvDatabaseURL), too
	case a.Cfg.DatabaseDirectURL != "":
		used, how = a.Cfg.FieldName(config.KeyDatabaseURL, config.EnvDatabaseURL),
			" goes through a transaction pooler (PgBouncer); given alone it is used instead of the direct URL: add --database-direct-url"
	default:
		used, how = a.Cfg.FieldName(config.KeyDatabaseURL, config.EnvDatabaseURL),
			" goes through a transaction pooler (PgBouncer): set "+config.EnvDatabaseDirectURL+" (or --database-direct-url, or database_direct_url in the config file) to a direct connection"
	}
	return Usage(&needsSessionError{"ferry db needs a real PostgreSQL session (it holds the migration lock and runs DDL), and " + used + how})
}

// pool opens (once) the target's pool. DATABASE_URL's main is App.DB, so
// its direct-URL rules stay those of the single-database ferry; another
// database uses its direct_url when set.
func (a *App) dbPool(ctx context.Context, f *dbFlags, t dbTarget) (*pgxpool.Pool, error) {
	if t.Name == config.DefaultDatabase && a.Cfg.DatabaseURL != "" {
		return a.DB(ctx)
	}
	if p, ok := f.pools[t.Name]; ok {
		return p, nil
	}
	url := t.URL
	if t.DirectURL != "" {
		url = t.DirectURL
	}
	pool, err := config.NewPool(ctx, url, 4)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, fmt.Errorf("cannot reach PostgreSQL database %s at %s: %w", t.Name, config.RedactURL(url), err)
	}
	if f.pools == nil {
		f.pools = map[string]*pgxpool.Pool{}
	}
	f.pools[t.Name] = pool
	a.OnClose(pool.Close)
	return pool, nil
}

// bbmEngineOn opens a batched migration engine on pool (one per database:
// its own tables, limit and pause switch), as bbmEngine does on App.DB;
// name is the database's name when several are configured ("" for one).
func (a *App) bbmEngineOn(ctx context.Context, pool *pgxpool.Pool, name string) (*batched.Engine, error) {
	if err := ferryschema.Ensure(ctx, pool, a.Log); err != nil {
		return nil, err
	}
	e := batched.NewEngine(pool, batched.Config{Logger: a.Log, Registry: a.Reg.BBM, TargetBatchDuration: a.Cfg.BBM.TargetBatchDuration,
		Identity: "ferry-cli:" + strconv.Itoa(os.Getpid()), Health: bbmHealth(a), Database: name})
	a.OnClose(e.Close)
	return e, nil
}

// prefixWriter starts every line with prefix ("ci: "), so interleaved
// output of several databases can be told apart (and grepped).
type prefixWriter struct {
	w      io.Writer
	prefix string
	bol    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var buf bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if p.bol {
			buf.WriteString(p.prefix)
		}
		buf.Write(line)
		p.bol = line[len(line)-1] == '\n'
	}
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// dbStatusJSON is one database's status in `ferry db status --json` when
// several databases are configured: {"database": NAME, ...status} or
// {"database": NAME, "error": ...}.
type dbStatusJSON struct {
	Database string `json:"database"`
	*dbmigrate.Status
	Error string `json:"error,omitempty"`
}

// multiStatusJSON prints a JSON array with every selected database; one
// that fails is in it with its error (and on stderr).
func (a *App) multiStatusJSON(ctx context.Context, f *dbFlags, ts []dbTarget) error {
	all := make([]dbStatusJSON, 0, len(ts))
	err := a.eachDB(ts, func(t dbTarget) error {
		st, answer := a.readStatus(ctx, f, t)
		if st != nil {
			all = append(all, dbStatusJSON{Database: t.Name, Status: st})
			return answer
		}
		all = append(all, dbStatusJSON{Database: t.Name, Error: answer.Error()})
		return answer
	})
	if perr := a.PrintJSON(all); perr != nil {
		return perr
	}
	return err
}
