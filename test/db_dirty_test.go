package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/dbmigrate"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestDBDirtyDetectionAndRepair(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE t (id int, x int);")
	e.write("1_t.down.sql", "DROP TABLE t;")
	// The first statement commits on its own; the second fails.
	e.write("2_index.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\nCREATE INDEX CONCURRENTLY t_y ON t (no_such_column);\n")
	e.write("2_index.down.sql", "-- ferry:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS t_y;\nDROP INDEX CONCURRENTLY IF EXISTS t_x;\n")
	e.write("3_more.up.sql", "CREATE TABLE more (id int);")

	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "2_index (up) failed with", "no_such_column", "database is now dirty")
	if !e.exists("t_x") {
		t.Fatal("the first statement of a no-transaction migration should have committed")
	}

	// migrate refuses, naming the version and both ways out.
	_, errs = e.wantExit(1, "migrate")
	first := strings.SplitN(errs, "\n", 2)[0]
	wantContains(t, first, "ferry: database is dirty: migration 2_index (up) failed at", "no_such_column")
	wantContains(t, errs, "`ferry db repair`", "`ferry db downto 1`")
	if e.exists("more") {
		t.Fatal("migrate ran past a dirty migration")
	}
	var st dbmigrate.Status
	if err := json.Unmarshal([]byte(e.notReady("--json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Dirty || st.DirtyMigration == nil || st.DirtyMigration.Version != "2" || st.Migrations[1].State != "dirty" {
		t.Fatalf("status: %+v", st)
	}

	// Way out 1: downto the previous version runs the (idempotent) down file.
	out := e.mustFerry("downto", "1")
	wantContains(t, out, "Reverted 1 migration(s)")
	if e.exists("t_x") {
		t.Fatal("downto did not undo the half-applied migration")
	}
	out = e.notReady()
	if strings.Contains(out, "DIRTY") {
		t.Fatalf("still dirty after downto:\n%s", out)
	}

	// Way out 2: fail again, fix by hand, repair (logged), migrate again.
	e.wantExit(1, "migrate")
	_, errs = e.wantExit(1, "repair", "3")
	wantContains(t, errs, "the dirty one is 2")
	if _, err := e.pool.Exec(e.ctx, `DROP INDEX t_x`); err != nil {
		t.Fatal(err)
	}
	out = e.mustFerry("repair")
	wantContains(t, out, "Cleared the dirty state of migration 2_index", "It is pending")
	var repairs int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM ferry_migration_log WHERE direction = 'repair' AND version = '2'`).Scan(&repairs); err != nil || repairs != 1 {
		t.Fatalf("repair not logged: %d %v", repairs, err)
	}
	_, errs = e.wantExit(1, "repair")
	wantContains(t, errs, "not dirty")
	e.write("2_index.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\nCREATE INDEX CONCURRENTLY t_y ON t (id);\n")
	e.mustFerry("migrate")
	if !e.exists("more") || !e.exists("t_y") {
		t.Fatal("migrate after repair did not finish")
	}
}

// A no-transaction migration whose migrator died (no finish recorded,
// lock gone) is reported as such, not as a failure with an error.
func TestDBDiedMigratorIsToldApart(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE t (id int);")
	e.write("2_index.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n")
	e.write("3_tx.up.sql", "CREATE TABLE u (id int);")
	e.mustFerry("migrate", "--to", "1")
	// Simulate a migrator killed mid-migration: its attempt row was
	// committed, then its session vanished.
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_migration_log (version, name, direction, no_transaction, started_at, backend_pid, os_pid, host)
		VALUES ('2', 'index', 'up', true, $1, 999999, 4242, 'deadhost')`, started); err != nil {
		t.Fatal(err)
	}
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "migration 2_index (up) was started at 2026-01-02T03:04:05Z", "ferry pid 4242 on deadhost",
		"the migrator died", "`ferry db repair`", "`ferry db downto 1`")
	if strings.Contains(errs, "failed with") {
		t.Fatalf("a died migrator must not be reported as failed:\n%s", errs)
	}
	out := e.notReady()
	wantContains(t, out, "its migrator died")

	// A transactional attempt that died was rolled back by PostgreSQL:
	// interrupted, not dirty.
	e.mustFerry("repair")
	e.mustFerry("migrate", "--to", "2")
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_migration_log (version, name, direction, no_transaction, backend_pid)
		VALUES ('3', 'tx', 'up', false, 999999)`); err != nil {
		t.Fatal(err)
	}
	out = e.notReady()
	wantContains(t, out, "interrupted")
	e.mustFerry("migrate")
}

// Two migrators: the second fails at once naming the first (pid,
// application_name), or waits with --lock-timeout.
func TestDBConcurrentMigrators(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_gate.up.sql", "CREATE TABLE gate (id int);")
	e.write("2_wait.up.sql", "INSERT INTO gate VALUES (1);")
	e.mustFerry("migrate", "--to", "1")

	// Block migration 2 on a table lock so migrator A sits inside it.
	blocker, err := pgx.Connect(e.ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(context.Background())
	btx, err := blocker.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := btx.Exec(e.ctx, `LOCK TABLE gate IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	migs, err := dbmigrate.Load(osDirFS(e.dir))
	if err != nil {
		t.Fatal(err)
	}
	a := dbmigrate.New(e.pool, migs, dbmigrate.Options{ApplicationName: "migrator-A"})
	errA := make(chan error, 1)
	go func() { _, err := a.Migrate(e.ctx, ""); errA <- err }()
	testenv.Eventually(t, 10*time.Second, "migrator A to wait inside migration 2", func() bool {
		var n int
		_ = e.pool.QueryRow(e.ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migrator-A' AND wait_event_type = 'Lock'`).Scan(&n)
		return n == 1
	})
	var pidA int
	if err := e.pool.QueryRow(e.ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = 'migrator-A'`).Scan(&pidA); err != nil {
		t.Fatal(err)
	}

	// B (the CLI) fails fast, naming A.
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "another ferry db migrator is running", fmt.Sprintf("backend pid %d", pidA), `application_name "migrator-A"`)

	// Status shows it running.
	out := e.notReady()
	wantContains(t, out, "running", "A migrator is running: backend pid")

	// B with --lock-timeout waits for A, then finds nothing to do.
	type res struct {
		code     int
		out, err string
	}
	done := make(chan res, 1)
	go func() {
		c, o, er := e.ferry("migrate", "--lock-timeout", "30s")
		done <- res{c, o, er}
	}()
	testenv.Eventually(t, 10*time.Second, "migrator B to queue on the advisory lock", func() bool {
		var n int
		_ = e.pool.QueryRow(e.ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n)
		return n == 1
	})
	if err := btx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errA; err != nil {
		t.Fatalf("migrator A: %v", err)
	}
	r := <-done
	if r.code != 0 || !strings.Contains(r.out, "Nothing to migrate") {
		t.Fatalf("migrator B: exit %d\n%s\n%s", r.code, r.out, r.err)
	}

	// A short --lock-timeout gives up, saying how long it waited.
	hold, err := e.pool.Acquire(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Release()
	if _, err := hold.Exec(e.ctx, `SELECT set_config('application_name', 'holder-H', false), pg_advisory_lock($1)`, dbmigrate.LockKey); err != nil {
		t.Fatal(err)
	}
	defer hold.Exec(context.Background(), `SELECT pg_advisory_unlock_all()`)
	_, err = a.Migrate(e.ctx, "")
	var le *dbmigrate.LockedError
	if !errors.As(err, &le) || le.Holder == nil || le.Holder.ApplicationName != "holder-H" {
		t.Fatalf("want LockedError naming holder-H, got %v", err)
	}
	_, errs = e.wantExit(1, "migrate", "--lock-timeout", "200ms")
	wantContains(t, errs, "(waited ", `application_name "holder-H"`)
}

// Behind PgBouncer in transaction mode, `ferry db migrate` with only the
// pooled URL refuses before running anything, naming DATABASE_DIRECT_URL;
// with it, it migrates.
func TestDBNeedsDirectURLBehindPgBouncer(t *testing.T) {
	e := newDBEnv(t)
	pooled := testenv.PooledURL(t, e.url)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	var out, errb bytes.Buffer
	code := cli.Main(e.ctx, []string{"db", "migrate", "--dir", e.dir, "--database-url", pooled}, &out, &errb, cli.Options{})
	if code != 2 || !strings.HasPrefix(errb.String(), "ferry: ferry db needs a real PostgreSQL session") || !strings.Contains(errb.String(), "DATABASE_DIRECT_URL") {
		t.Fatalf("db migrate through PgBouncer: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	if e.exists("a") {
		t.Fatal("it ran a migration before refusing")
	}
	errb.Reset()
	code = cli.Main(e.ctx, []string{"db", "backup", t.TempDir() + "/b.dump", "--database-url", pooled}, &out, &errb, cli.Options{})
	if code != 2 || !strings.Contains(errb.String(), "DATABASE_DIRECT_URL") {
		t.Fatalf("db backup through PgBouncer: exit %d\nstderr: %s", code, errb.String())
	}
	// A direct URL through the pooler too: it says so, not "set it".
	errb.Reset()
	code = cli.Main(e.ctx, []string{"db", "migrate", "--dir", e.dir, "--database-url", pooled, "--database-direct-url", pooled}, &out, &errb, cli.Options{})
	if code != 2 || !strings.Contains(errb.String(), "--database-direct-url goes through a transaction pooler (PgBouncer) too") {
		t.Fatalf("db migrate with DATABASE_DIRECT_URL through PgBouncer: exit %d\nstderr: %s", code, errb.String())
	}
	// --database-url alone wins over DATABASE_DIRECT_URL: it says so.
	t.Setenv("DATABASE_DIRECT_URL", testenv.DirectURL(t, e.url))
	errb.Reset()
	code = cli.Main(e.ctx, []string{"db", "migrate", "--dir", e.dir, "--database-url", pooled}, &out, &errb, cli.Options{})
	if code != 2 || !strings.Contains(errb.String(), "--database-url goes through a transaction pooler (PgBouncer); given alone it is used instead of the direct URL") {
		t.Fatalf("--database-url alone with DATABASE_DIRECT_URL set: exit %d\nstderr: %s", code, errb.String())
	}
	t.Setenv("DATABASE_DIRECT_URL", "")
	// Another database: its own variable and config key.
	cfg := filepath.Join(t.TempDir(), "ferry.yml")
	if err := os.WriteFile(cfg, []byte("databases:\n  ci:\n    url: "+pooled+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	code = cli.Main(e.ctx, []string{"db", "migrate", "--db", "ci", "--dir", e.dir, "--database-url", testenv.DirectURL(t, e.url), "--config", cfg}, &out, &errb, cli.Options{})
	if code != 2 || !strings.Contains(errb.String(), "databases.ci.url goes through a transaction pooler (PgBouncer): set DATABASE_DIRECT_URL_CI (or databases.ci.direct_url") {
		t.Fatalf("db migrate --db ci through PgBouncer: exit %d\nstderr: %s", code, errb.String())
	}
	if e.exists("a") {
		t.Fatal("it ran a migration before refusing")
	}
	out.Reset()
	errb.Reset()
	code = cli.Main(e.ctx, []string{"db", "migrate", "--dir", e.dir, "--database-url", pooled, "--database-direct-url", testenv.DirectURL(t, e.url)},
		&out, &errb, cli.Options{})
	if code != 0 || !e.exists("a") {
		t.Fatalf("db migrate with DATABASE_DIRECT_URL: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
}
