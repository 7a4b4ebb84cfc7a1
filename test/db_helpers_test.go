package test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// dbEnv is a fresh database plus a migrations directory, driving
// `ferry db ...` in-process.
type dbEnv struct {
	t    *testing.T
	ctx  context.Context
	url  string
	dir  string
	pool *pgxpool.Pool
}

func newDBEnv(t *testing.T) *dbEnv {
	t.Helper()
	e := &dbEnv{t: t, ctx: testenv.Context(t), url: testenv.DatabaseURL(t), dir: t.TempDir()}
	// The test's own statements need a real session (advisory locks that
	// hold a migrator back), so they bypass PgBouncer.
	pool, err := pgxpool.New(e.ctx, testenv.DirectURL(t, e.url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.pool = pool
	return e
}

func (e *dbEnv) write(name, sql string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(sql), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *dbEnv) remove(name string) {
	e.t.Helper()
	if err := os.Remove(filepath.Join(e.dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

// ferry runs `ferry db <args>` against this env's database and directory.
func (e *dbEnv) ferry(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"db"}, args...)
	full = append(full, "--dir", e.dir, "--database-url", e.url, "--log-level", "error")
	if testenv.ViaPgBouncer() {
		full = append(full, "--database-direct-url", testenv.DirectURL(e.t, e.url))
	}
	code = cli.Main(e.ctx, full, &out, &errb, cli.Options{})
	return code, out.String(), errb.String()
}

func (e *dbEnv) mustFerry(args ...string) string {
	e.t.Helper()
	code, out, errs := e.ferry(args...)
	if code != 0 {
		e.t.Fatalf("ferry db %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (e *dbEnv) wantExit(want int, args ...string) (stdout, stderr string) {
	e.t.Helper()
	code, out, errs := e.ferry(args...)
	if code != want {
		e.t.Fatalf("ferry db %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errs)
	}
	return out, errs
}

// notReady runs `ferry db status <args>` where it must answer "no" (exit
// 1: dirty or a migration pending) and returns its stdout.
func (e *dbEnv) notReady(args ...string) string {
	e.t.Helper()
	out, _ := e.wantExit(1, append([]string{"status"}, args...)...)
	return out
}

func (e *dbEnv) exists(rel string) bool {
	e.t.Helper()
	var ok bool
	if err := e.pool.QueryRow(e.ctx, `SELECT to_regclass($1) IS NOT NULL`, rel).Scan(&ok); err != nil {
		e.t.Fatal(err)
	}
	return ok
}

func (e *dbEnv) applied() []string {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT version FROM schema_migrations ORDER BY length(version), version`)
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

func wantContains(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Fatalf("output does not contain %q:\n%s", sub, s)
		}
	}
}

func osDirFS(dir string) fs.FS { return os.DirFS(dir) }
