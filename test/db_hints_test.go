package test

import (
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// A failed migration keeps PostgreSQL's DETAIL and where in the file it
// failed; one whose object exists already names the documented way out.
func TestDBErrorsKeepDetailAndHint(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE t (id int, author_id int);\nINSERT INTO t VALUES (1, 0), (2, 0);\n")
	e.write("2_uniq.up.sql", "-- a comment line\nCREATE UNIQUE INDEX t_author ON t (author_id);\n")
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "migration 2_uniq (up) failed with: ERROR: could not create unique index",
		"DETAIL: Key (author_id)=(0) is duplicated.", "rolled back; fix it and run again")
	if strings.Contains(errs, "mark-complete") {
		t.Fatalf("a duplicate key is not a duplicate object:\n%s", errs)
	}
	e.write("2_uniq.up.sql", "-- a comment line\nCREATE TABLE t (id int);\nSELECT nope FROM t;\n")
	_, errs = e.wantExit(1, "migrate")
	wantContains(t, errs, `relation "t" already exists (SQLSTATE 42P07)`,
		"record it without running it: `ferry db mark-complete 2`")
	e.mustFerry("mark-complete", "2")

	e.write("3_col.up.sql", "SELECT 1;\nSELECT nope\n  FROM t;\n")
	_, errs = e.wantExit(1, "migrate")
	wantContains(t, errs, `column "nope" does not exist`, "3_col.up.sql line 2, column 8: SELECT nope")
	// The log keeps it all, and status shows it on one line.
	out := e.notReady()
	wantContains(t, out, "error: ERROR: column \"nope\" does not exist (SQLSTATE 42703); at ")
}

// A required migration whose class this binary lacks: migrate names
// mark-finished, not a finalize that would fail.
func TestDBGateUnregisteredClassWayOut(t *testing.T) {
	e := newDBEnv(t)
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO batched_background_migrations
		(job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size)
		VALUES ('Gone::Backfill', 'events', 'id', '[]', 1, 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	e.write("1_swap.up.sql", "-- ferry:require-bbm Gone::Backfill events id []\nCREATE TABLE b (id int);\n")
	for _, args := range [][]string{{"migrate"}, {"migrate", "--finalize"}} {
		_, errs := e.wantExit(1, args...)
		wantContains(t, errs, gateText+"'active'", "Class Gone::Backfill is not registered in this ferry binary",
			"\tferry bbm mark-finished 1 --yes", "NOT migrated", "Required by migration 1_swap")
		if strings.Contains(errs, "\tferry bbm finalize") {
			t.Fatalf("%v points at finalize:\n%s", args, errs)
		}
	}
}

// A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an INVALID index: the
// way out is to drop it, not to record the migration complete (which the
// "already exists" of the next run would otherwise suggest).
func TestDBInvalidIndexWayOut(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE t (id int, author_id int);\nINSERT INTO t VALUES (1, 0), (2, 0);\n")
	e.write("2_uniq.up.sql", "-- ferry:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY t_author_u ON t (author_id);\n")
	const advice = "PostgreSQL holds index public.t_author_u as INVALID"
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "DETAIL: Key (author_id)=(0) is duplicated.", advice,
		"drop it (`DROP INDEX CONCURRENTLY public.t_author_u;`), then run `ferry db repair` and `ferry db migrate` again")
	e.mustFerry("repair")
	_, errs = e.wantExit(1, "migrate")
	wantContains(t, errs, `relation "t_author_u" already exists`, advice)
	if strings.Contains(errs, "mark-complete") {
		t.Fatalf("an INVALID index is not an applied migration:\n%s", errs)
	}
	for _, q := range []string{`DROP INDEX CONCURRENTLY t_author_u`, `DELETE FROM t WHERE id = 2`} {
		if _, err := e.pool.Exec(e.ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	e.mustFerry("repair")
	e.mustFerry("migrate")
}

// A run-time error has no position: a no-transaction file's error names
// the statement, where it starts, and that the ones before it ran.
func TestDBErrorNamesTheStatementWithoutPosition(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_div.up.sql", "-- ferry:no-transaction\nCREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (1/0);\n")
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "division by zero",
		"in the statement at "+e.dir+"/1_div.up.sql line 4 (statement 3 of 3; the ones before it ran): INSERT INTO t VALUES (1/0)")
}
