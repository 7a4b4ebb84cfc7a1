package test

import (
	"strings"
	"testing"
)

// db migrate --finalize shows the inline finalize's progress, as plain
// lines when stderr is not a terminal (no carriage-return frames).
func TestDBMigrateFinalizeShowsProgress(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_events.up.sql", "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);\nINSERT INTO events (payload) SELECT 'p' || g FROM generate_series(1, 3000) g;\nANALYZE events;\n")
	e.write("2_add_big.up.sql", "-- ferry:queue-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"], [\"id_big\"]]\nALTER TABLE events ADD COLUMN id_big bigint;\n")
	e.write("3_require.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"],[\"id_big\"]]\nALTER TABLE events ALTER COLUMN id_big SET NOT NULL;\n")
	out, errs := e.wantExit(0, "migrate", "--finalize")
	wantContains(t, out, "finalizing batched background migration", "3 require: migrated")
	wantContains(t, errs, "CopyColumnUsingBackgroundMigrationJob events.id: started at 0/3000 rows (0.0%)\n",
		"CopyColumnUsingBackgroundMigrationJob events.id: done, 3000 rows in ")
	if strings.Contains(errs, "\r") {
		t.Fatalf("carriage returns on a non-terminal:\n%q", errs)
	}
}

// backup and restore show their progress in tables.
func TestDBBackupRestoreShowProgress(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE a (id int); CREATE TABLE b (id int); INSERT INTO a SELECT generate_series(1, 1000);\n")
	e.mustFerry("migrate")
	dump := t.TempDir() + "/x.dump"
	_, errs := e.wantExit(0, "backup", dump)
	// a, b, schema_migrations and ferry_migration_log.
	wantContains(t, errs, "pg_dump "+dump+": started at 0/4 tables (0.0%)\n", "pg_dump "+dump+": done, 4 tables in ")
	_, errs = e.wantExit(0, "restore", dump, "--yes")
	wantContains(t, errs, "restore "+dump+": started at 0/4 tables (0.0%)\n", "restore "+dump+": done, 4 tables in ")
	if strings.Contains(errs, "\r") {
		t.Fatalf("carriage returns on a non-terminal:\n%q", errs)
	}
	if _, errs := e.wantExit(0, "backup", dump, "--progress", "none"); errs != "" {
		t.Fatalf("--progress none: %q", errs)
	}
}
