package test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// The failed-upgrade runbook: backup, a failed upgrade, restore. The
// restore warns that a ferry worker is connected, and the record of the
// failed upgrade (ferry_migration_log, ferry_web_actions) survives it,
// with the ids going on after it.
func TestDBRestoreKeepsTheRecord(t *testing.T) {
	e := newDBEnv(t)
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	e.write("1_v1.up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY);\n")
	e.mustFerry("migrate")
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_web_actions (actor, action) VALUES ('alice', 'pause')`); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "v1.dump")
	e.mustFerry("backup", dump)

	e.write("2_broken.up.sql", "UPDATE users SET nope = 1;\n")
	e.wantExit(1, "migrate")
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_web_actions (actor, action, migration_id) VALUES ('bob', 'finalize', 4)`); err != nil {
		t.Fatal(err)
	}
	before := e.rows(`SELECT version || ':' || direction || ':' || coalesce(success::text, '') FROM ferry_migration_log ORDER BY id`)

	// A worker's connection, as ferry names them.
	cc, err := pgx.ParseConfig(testenv.DirectURL(t, e.url))
	if err != nil {
		t.Fatal(err)
	}
	cc.RuntimeParams["application_name"] = "ferry"
	worker, err := pgx.ConnectConfig(e.ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close(e.ctx)

	_, errs := e.wantExit(2, "restore", dump)
	wantContains(t, errs, "warning: 1 other ferry session(s) are connected to database", "(ferry", "re-run with --yes")
	out, errs := e.wantExit(0, "restore", dump, "--yes")
	wantContains(t, errs, "warning: 1 other ferry session(s)", "replaced their tables under them")
	wantContains(t, out, "Restored", "ferry_migration_log had 2 rows before the restore", "ferry_web_actions had 2 rows")

	after := e.rows(`SELECT version || ':' || direction || ':' || coalesce(success::text, '') FROM ferry_migration_log ORDER BY id`)
	if strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("migration log after the restore %q, before %q", after, before)
	}
	if got := strings.Join(e.rows(`SELECT actor FROM ferry_web_actions ORDER BY id`), " "); got != "alice bob" {
		t.Fatalf("web actions after the restore: %s", got)
	}
	// A migration queued after the restore does not take the id of one the
	// kept audit rows name (its page would show their actions as its own).
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO batched_background_migrations (job_class_name, table_name, column_name, job_arguments, batch_size, sub_batch_size)
		VALUES ('X', 'users', 'id', '[]', 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	var newID int64
	if err := e.pool.QueryRow(e.ctx, `SELECT max(id) FROM batched_background_migrations`).Scan(&newID); err != nil || newID <= 4 {
		t.Fatalf("a migration queued after the restore got id %d (%v); the kept audit rows name 4", newID, err)
	}
	// The failed attempt is still there to read, and new rows go after it.
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_web_actions (actor, action) VALUES ('carol', 'resume')`); err != nil {
		t.Fatalf("an insert after the restore: %v", err)
	}
	if e.exists("users") && len(e.applied()) != 1 {
		t.Fatalf("applied after the restore: %v", e.applied())
	}
	e.remove("2_broken.up.sql")
	e.mustFerry("migrate")
}

// A no-transaction migration that failed halfway leaves the database
// dirty; restoring the backup taken before it undoes what it did, so the
// database is clean again and migrate runs (the log says the restore
// cleared it). A backup taken while dirty restores a dirty database.
func TestDBRestoreOfAnEarlierBackupIsNotDirty(t *testing.T) {
	e := newDBEnv(t)
	// Before ferry ever ran here: the backup has no migration log at all.
	if _, err := e.pool.Exec(e.ctx, `CREATE TABLE app (id int)`); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(t.TempDir(), "first.dump")
	e.mustFerry("backup", first)
	e.write("1_v1.up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY);\n")
	e.mustFerry("migrate")
	clean := filepath.Join(t.TempDir(), "clean.dump")
	e.mustFerry("backup", clean)

	e.write("2_half.up.sql", "-- ferry:no-transaction\nCREATE TABLE half (id int);\nSELECT 1/0;\n")
	e.wantExit(1, "migrate")
	out, _ := e.wantExit(1, "status")
	wantContains(t, out, "DIRTY")
	dirty := filepath.Join(t.TempDir(), "dirty.dump")
	e.mustFerry("backup", dirty)

	e.mustFerry("restore", clean, "--yes")
	if e.exists("half") {
		t.Fatal("the restore left the half-made table")
	}
	out, _ = e.wantExit(1, "status") // 2 is pending again
	if strings.Contains(out, "DIRTY") || !strings.Contains(out, "pending") {
		t.Fatalf("dirty after restoring a backup taken before the failure:\n%s", out)
	}
	if got := e.rows(`SELECT direction || ': ' || error FROM ferry_migration_log WHERE version = '2' ORDER BY id`); len(got) != 2 ||
		!strings.HasPrefix(got[1], "repair: cleared by the restore of a backup taken before up attempt #") {
		t.Fatalf("log of version 2 after the restore: %q", got)
	}

	// The backup taken while dirty brings the dirty state back with it.
	e.mustFerry("restore", dirty, "--yes")
	out, _ = e.wantExit(1, "status")
	wantContains(t, out, "DIRTY")
	e.mustFerry("restore", clean, "--yes")
	e.write("2_half.up.sql", "-- ferry:no-transaction\nCREATE TABLE half (id int);\n")
	e.mustFerry("migrate")
	if !e.exists("half") {
		t.Fatal("migrate after the restore did not run 2_half")
	}

	// The first upgrade under ferry fails halfway; the backup from before
	// it has no log, and restoring it leaves a clean database too.
	e.write("3_half.up.sql", "-- ferry:no-transaction\nCREATE TABLE half3 (id int);\nSELECT 1/0;\n")
	e.wantExit(1, "migrate")
	e.mustFerry("restore", first, "--yes")
	out, _ = e.wantExit(1, "status")
	if strings.Contains(out, "DIRTY") || e.exists("half3") {
		t.Fatalf("dirty after restoring a backup taken before ferry ran:\n%s", out)
	}
}

func (e *dbEnv) rows(q string) []string {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, q)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}
