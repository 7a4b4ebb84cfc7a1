package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// multiEnv is several databases named in a config file (databases:),
// each with its own migrations directory, driven as an operator would:
// `ferry db ... --config FILE`.
type multiEnv struct {
	t     *testing.T
	ctx   context.Context
	cfg   string
	root  string
	names []string
	urls  map[string]string
	dirs  map[string]string
	pools map[string]*pgxpool.Pool
}

func newMultiEnv(t *testing.T, names ...string) *multiEnv {
	t.Helper()
	e := &multiEnv{t: t, ctx: testenv.Context(t), root: t.TempDir(), names: names,
		urls: map[string]string{}, dirs: map[string]string{}, pools: map[string]*pgxpool.Pool{}}
	var yml strings.Builder
	yml.WriteString("databases:\n")
	for _, n := range names {
		u := testenv.DatabaseURL(t)
		e.urls[n] = u
		e.dirs[n] = filepath.Join(e.root, "migrations", n)
		if err := os.MkdirAll(e.dirs[n], 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&yml, "  %s:\n    url: %q\n    migrations: %q\n", n, u, e.dirs[n])
		if testenv.ViaPgBouncer() {
			fmt.Fprintf(&yml, "    direct_url: %q\n", testenv.DirectURL(t, u))
		}
		pool, err := pgxpool.New(e.ctx, testenv.DirectURL(t, u))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		e.pools[n] = pool
	}
	e.cfg = filepath.Join(e.root, "ferry.yml")
	if err := os.WriteFile(e.cfg, []byte(yml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// onlyConfigFile clears DATABASE_URL, which would add (or override) the
// database main; call it after every newMultiEnv (testenv reads it).
func onlyConfigFile(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv("DATABASE_DIRECT_URL", "")
}

func (e *multiEnv) write(db, name, sql string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dirs[db], name), []byte(sql), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// ferry runs `ferry <args>` (args start with "db" or "bbm").
func (e *multiEnv) ferry(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	full := append(append([]string{}, args...), "--config", e.cfg, "--log-level", "error")
	code = cli.Main(e.ctx, full, &out, &errb, cli.Options{})
	return code, out.String(), errb.String()
}

func (e *multiEnv) want(code int, args ...string) (stdout, stderr string) {
	e.t.Helper()
	c, out, errs := e.ferry(args...)
	if c != code {
		e.t.Fatalf("ferry %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), c, code, out, errs)
	}
	return out, errs
}

func (e *multiEnv) applied(db string) []string {
	e.t.Helper()
	rows, err := e.pools[db].Query(e.ctx, `SELECT version FROM schema_migrations ORDER BY length(version), version`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// tables lists the user tables of db except ferry's own.
func (e *multiEnv) tables(db string) []string {
	e.t.Helper()
	rows, err := e.pools[db].Query(e.ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public'
		AND tablename NOT LIKE 'ferry%' AND tablename NOT LIKE 'batched_background%' AND tablename NOT IN ('schema_migrations', 'background_migration_jobs')
		ORDER BY 1`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// everyLineNamed fails unless every non-empty line of out starts with one
// of the database names and ": ".
func everyLineNamed(t *testing.T, out string, names ...string) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(l, n+": ") }) {
			t.Fatalf("line %q does not name its database (%s):\n%s", l, strings.Join(names, ", "), out)
		}
	}
}

// GitLab's main and ci: each database has its own migrations, its own
// batched migration tables and its own gate; migrate without --db does
// both, every line names its database; the gate of ci looks in ci only;
// a destructive write without --db refuses with GitLab's wording;
// mark-complete without --db records on every database with GitLab's
// lines; backups name their database and a ci backup is refused by main.
func TestDBMultiGitLabMainAndCI(t *testing.T) {
	e := newMultiEnv(t, "main", "ci")
	onlyConfigFile(t)
	const copyCI = `CopyColumnUsingBackgroundMigrationJob ci_builds id [["id"],["id_big"]]`
	e.write("main", "1_projects.up.sql", "CREATE TABLE projects (id bigserial PRIMARY KEY);\n")
	e.write("main", "1_projects.down.sql", "DROP TABLE projects;\n")
	// main's gate names ci's migration: never queued in main, so it passes.
	e.write("main", "2_gate.up.sql", "-- ferry:require-bbm "+copyCI+"\nCREATE TABLE main_gated (id int);\n")
	e.write("main", "2_gate.down.sql", "DROP TABLE main_gated;\n")
	e.write("ci", "10_builds.up.sql", "CREATE TABLE ci_builds (id bigserial PRIMARY KEY, name text);\nINSERT INTO ci_builds (name) SELECT 'b' || g FROM generate_series(1, 200) g;\n")
	e.write("ci", "10_builds.down.sql", "DROP TABLE ci_builds;\n")
	e.write("ci", "11_add_big.up.sql", "-- ferry:queue-bbm "+copyCI+"\nALTER TABLE ci_builds ADD COLUMN id_big bigint;\n")
	e.write("ci", "11_add_big.down.sql", "ALTER TABLE ci_builds DROP COLUMN id_big;\n")
	e.write("ci", "12_require.up.sql", "-- ferry:require-bbm "+copyCI+"\nALTER TABLE ci_builds ALTER COLUMN id_big SET NOT NULL;\n")
	e.write("ci", "12_require.down.sql", "ALTER TABLE ci_builds ALTER COLUMN id_big DROP NOT NULL;\n")

	// Not ready: status exits 1, shows both.
	out, _ := e.want(1, "db", "status")
	everyLineNamed(t, out, "main", "ci")
	wantContains(t, out, "main: 1 ", "ci: 12 ", "ci: Current version: 0; 3 pending.")

	// migrate: main goes through (its gate was never queued in main), ci
	// queues its backfill and stops at its own gate, naming ci.
	out, errs := e.want(1, "db", "migrate")
	everyLineNamed(t, out, "main", "ci")
	wantContains(t, out, "main: == 2 gate: migrated", "main: -- required batched background migration", "never queued in this database",
		"ci: -- queued batched background migration CopyColumnUsingBackgroundMigrationJob ci_builds id")
	wantContains(t, errs, "ferry: ci: "+gateText+"'active':", `ferry bbm finalize --db ci CopyColumnUsingBackgroundMigrationJob ci_builds id`,
		"finalize it inline with `ferry db migrate --finalize --db ci`")
	if got := strings.Join(e.applied("main"), " "); got != "1 2" {
		t.Fatalf("main applied %q", got)
	}
	if got := strings.Join(e.applied("ci"), " "); got != "10 11" {
		t.Fatalf("ci applied %q", got)
	}
	var n int
	if err := e.pools["main"].QueryRow(e.ctx, `SELECT count(*) FROM batched_background_migrations`).Scan(&n); err == nil && n != 0 {
		t.Fatalf("ci's backfill was queued in main (%d rows)", n)
	}
	// Sourcegraph's spelling, on ci only, finalizing inline in ci.
	out, _ = e.want(0, "db", "up", "-db=ci", "--finalize")
	wantContains(t, out, "ci: -- finalizing batched background migration", "ci: == 12 require: migrated")
	if strings.Contains(out, "main:") {
		t.Fatalf("-db=ci ran on main:\n%s", out)
	}
	var missing int
	if err := e.pools["ci"].QueryRow(e.ctx, `SELECT count(*) FROM ci_builds WHERE id_big IS DISTINCT FROM id`).Scan(&missing); err != nil || missing != 0 {
		t.Fatalf("ci backfill incomplete: %d, %v", missing, err)
	}
	out, _ = e.want(0, "db", "status")
	wantContains(t, out, "main: Current version: 2; 0 pending.", "ci: Current version: 12; 0 pending.")
	out, _ = e.want(0, "db", "status", "--json")
	var js []struct {
		Database string `json:"database"`
		Current  string `json:"current"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || len(js) != 2 || js[0].Database != "main" || js[1].Database != "ci" {
		t.Fatalf("status --json: %v\n%s", err, out)
	}

	// A destructive write needs --db.
	_, errs = e.want(2, "db", "downto", "1")
	wantContains(t, errs, "Please specify the database", "main, ci")
	_, errs = e.want(2, "db", "repair")
	wantContains(t, errs, "Please specify the database")
	out, _ = e.want(0, "db", "downto", "--db", "ci", "11")
	wantContains(t, out, "ci: == 12 require: reverting", "ci: Reverted 1 migration(s); now at 11.")
	if got := strings.Join(e.applied("main"), " "); got != "1 2" {
		t.Fatalf("downto --db ci touched main: %q", got)
	}
	// Bad names: exit 2, listing the configured ones.
	_, errs = e.want(2, "db", "migrate", "--db", "")
	wantContains(t, errs, "--db is empty", "main, ci")
	for _, args := range [][]string{{"db", "status", "--db", "sec"}, {"db", "migrate", "-db=sec"}, {"db", "downto", "--database", "sec", "1"}} {
		_, errs = e.want(2, args...)
		wantContains(t, errs, `unknown database "sec": configured databases are main, ci`)
	}

	// GitLab's mark_migration_complete on every database, then on ci only.
	out, _ = e.want(0, "db", "mark-complete", "2")
	wantContains(t, out, "Migration version '2' is already marked complete on database main\n", "Successfully marked '2' as complete on database ci\n")
	out, _ = e.want(0, "db", "mark_migration_complete:ci[13]")
	if out != "Successfully marked '13' as complete on database ci\n" {
		t.Fatalf("mark_migration_complete:ci: %q", out)
	}
	if got := strings.Join(e.applied("ci"), " "); got != "2 10 11 13" {
		t.Fatalf("ci applied %q", got)
	}

	// Backups name their database; ci's backup is not main's.
	file := filepath.Join(e.root, "ci.dump")
	_, errs = e.want(2, "db", "backup", file)
	wantContains(t, errs, "Please specify the database")
	out, _ = e.want(0, "db", "backup", file, "--db", "ci")
	wantContains(t, out, "ci: Backed up database")
	meta, err := os.ReadFile(file + ".meta.json")
	if err != nil || !strings.Contains(string(meta), `"ferry_database": "ci"`) {
		t.Fatalf("meta: %v\n%s", err, meta)
	}
	_, errs = e.want(2, "db", "restore", file, "--db", "main", "--yes")
	wantContains(t, errs, "ferry: main: ", "is a backup of database ci, not main", "--force-other-database")
	if got := e.tables("main"); !slices.Contains(got, "projects") || slices.Contains(got, "ci_builds") {
		t.Fatalf("refused restore changed main: %v", got)
	}
	if _, err := e.pools["ci"].Exec(e.ctx, `CREATE TABLE ci_junk (id int)`); err != nil {
		t.Fatal(err)
	}
	// A worker on ci: the warning's pause-all names ci, as it must to work.
	cc := e.pools["ci"].Config().ConnConfig.Copy()
	cc.RuntimeParams["application_name"] = "ferry"
	worker, err := pgx.ConnectConfig(e.ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	_, errs = e.want(2, "db", "restore", file, "--db", "ci")
	wantContains(t, errs, "1 other ferry session(s) are connected to database", "or run `ferry bbm pause-all --db ci`) first")
	worker.Close(e.ctx)
	out, _ = e.want(0, "db", "restore", file, "--db", "ci", "--yes")
	wantContains(t, out, "ci: Dropped table public.ci_junk (not in the backup)", "ci: Restored ")

	// Legacy migrations run on main only, and say so (this main has no
	// tracking table: exit 1).
	_, errs = e.want(1, "bm", "pending")
	wantContains(t, errs, "note: ferry bm works on database main only (configured: main, ci)")
}

// One database down: the others keep working, the error names it, exit 1.
func TestDBMultiOneDatabaseDown(t *testing.T) {
	e := newMultiEnv(t, "main", "ci")
	onlyConfigFile(t)
	e.write("main", "1_a.up.sql", "CREATE TABLE a (id int);\n")
	e.write("ci", "1_b.up.sql", "CREATE TABLE b (id int);\n")
	// ci points at a port nothing listens on.
	yml, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	down := "postgres://ferry@127.0.0.1:1/nothing?sslmode=disable&connect_timeout=2"
	var lines []string
	inCI := false
	for _, l := range strings.Split(string(yml), "\n") {
		switch {
		case strings.HasPrefix(l, "  ci:"):
			inCI = true
		case strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "    "):
			inCI = false
		}
		if inCI && (strings.HasPrefix(l, "    url:") || strings.HasPrefix(l, "    direct_url:")) {
			l = l[:strings.Index(l, ":")+1] + " " + fmt.Sprintf("%q", down)
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(e.cfg, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs := e.want(1, "db", "migrate")
	wantContains(t, out, "main: == 1 a: migrated", "main: Applied 1 migration(s).")
	wantContains(t, errs, "ferry: ci: cannot reach PostgreSQL database ci at")
	if got := strings.Join(e.applied("main"), " "); got != "1" {
		t.Fatalf("main applied %q", got)
	}
	out, errs = e.want(1, "db", "status")
	wantContains(t, out, "main: Current version: 1; 0 pending.")
	wantContains(t, errs, "ferry: ci: cannot reach PostgreSQL database ci")
	// --db main alone is fine.
	e.want(0, "db", "status", "--db", "main")
}

// The environment alone: DATABASE_URL is main, DATABASE_URL_CI adds ci
// and DATABASE_MIGRATIONS_CI gives it its own directory; main keeps --dir.
func TestDBMultiFromEnvironment(t *testing.T) {
	ctx := testenv.Context(t)
	mainURL, ciURL := testenv.DatabaseURL(t), testenv.DatabaseURL(t)
	mainDir, ciDir := t.TempDir(), t.TempDir()
	// Before DATABASE_URL changes: testenv reads it.
	mainDirect, ciDirect := testenv.DirectURL(t, mainURL), testenv.DirectURL(t, ciURL)
	t.Setenv("DATABASE_URL", mainURL)
	t.Setenv("DATABASE_URL_CI", ciURL)
	t.Setenv("DATABASE_MIGRATIONS_CI", ciDir)
	if testenv.ViaPgBouncer() {
		t.Setenv("DATABASE_DIRECT_URL", mainDirect)
		t.Setenv("DATABASE_DIRECT_URL_CI", ciDirect)
	}
	for dir, sql := range map[string]string{mainDir: "CREATE TABLE in_main (id int);\n", ciDir: "CREATE TABLE in_ci (id int);\n"} {
		if err := os.WriteFile(filepath.Join(dir, "5_t.up.sql"), []byte(sql), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(want int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		code := cli.Main(ctx, append(args, "--dir", mainDir, "--log-level", "error"), &out, &errb, cli.Options{})
		if code != want {
			t.Fatalf("ferry %s: exit %d, want %d\n%s\n%s", strings.Join(args, " "), code, want, out.String(), errb.String())
		}
		return out.String()
	}
	out := run(0, "db", "migrate")
	everyLineNamed(t, out, "main", "ci")
	wantContains(t, out, "main: == 5 t: migrated", "ci: == 5 t: migrated")
	for u, want := range map[string]string{mainDirect: "in_main", ciDirect: "in_ci"} {
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		var tables []string
		rows, _ := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE tablename LIKE 'in_%'`)
		for rows.Next() {
			var s string
			_ = rows.Scan(&s)
			tables = append(tables, s)
		}
		rows.Close()
		pool.Close()
		if !slices.Equal(tables, []string{want}) {
			t.Fatalf("%s has %v, want only %s", u, tables, want)
		}
	}
	out = run(0, "db", "status", "-db=ci")
	wantContains(t, out, "ci: Current version: 5; 0 pending.")
}

// With several databases, every command a dirty database's error or
// status prints names it (--db ci), and each works when pasted: without
// --db, repair and downto are refused and mark-complete records the
// version on every database.
func TestDBMultiDirtyWaysOutNameTheDatabase(t *testing.T) {
	e := newMultiEnv(t, "main", "ci")
	onlyConfigFile(t)
	e.write("main", "1_a.up.sql", "CREATE TABLE a (id int);\n")
	e.write("ci", "10_b.up.sql", "CREATE TABLE b (id int);\n")
	e.write("ci", "10_b.down.sql", "DROP TABLE b;\n")
	e.write("ci", "11_idx.up.sql", "-- ferry:no-transaction\nCREATE TABLE c (id int);\nSELECT no_such_column FROM b;\n")
	e.write("ci", "11_idx.down.sql", "DROP TABLE IF EXISTS c;\n")
	_, errs := e.want(1, "db", "migrate")
	wantContains(t, errs, "(see `ferry db status --db ci`)")
	// A multi-line error names its database on every line.
	for _, line := range strings.Split(strings.TrimSpace(errs), "\n") {
		if !strings.HasPrefix(line, "ferry: ci: ") {
			t.Fatalf("a line of ci's error without its database: %q in\n%s", line, errs)
		}
	}
	_, errs = e.want(1, "db", "migrate", "--db", "ci")
	ways := []string{"`ferry db repair --db ci`", "`ferry db mark-complete 11 --db ci`", "`ferry db downto 10 --db ci`"}
	wantContains(t, errs, ways...)
	out, _ := e.want(1, "db", "status", "--db", "ci")
	wantContains(t, out, append(ways, "`ferry db migrate --db ci` refuses")...)
	if strings.Contains(out+errs, "`ferry db repair`") || strings.Contains(out+errs, "`ferry db downto 10`") {
		t.Fatalf("a way out without --db:\n%s\n%s", out, errs)
	}
	// Pasted as printed: downto undoes it on ci only.
	out, _ = e.want(0, "db", "downto", "10", "--db", "ci")
	wantContains(t, out, "Reverted")
	if got := strings.Join(e.applied("ci"), " "); got != "10" {
		t.Fatalf("ci applied %q after downto", got)
	}
	if got := strings.Join(e.applied("main"), " "); got != "1" {
		t.Fatalf("main applied %q: downto --db ci touched it", got)
	}

	// A failed CREATE of an object that exists: the documented way out
	// names ci too.
	e.write("ci", "12_again.up.sql", "CREATE TABLE b (id int);\n")
	e.write("ci", "11_idx.up.sql", "CREATE TABLE c (id int);\n")
	_, errs = e.want(1, "db", "migrate", "--db", "ci")
	wantContains(t, errs, "`ferry db mark-complete 12 --db ci`")
	e.want(0, "db", "mark-complete", "12", "--db", "ci")
	if got := strings.Join(e.applied("ci"), " "); got != "10 11 12" {
		t.Fatalf("ci applied %q", got)
	}
}
