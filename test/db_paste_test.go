package test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// ferryNoDir runs `ferry db <args>` without --dir, from the test's working
// directory, which has no db/migrate: an operator outside the app's folder.
func (e *dbEnv) ferryNoDir(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	full := append(append([]string{"db"}, args...), "--database-url", testenv.DirectURL(e.t, e.url), "--log-level", "error")
	code = cli.Main(e.ctx, full, &out, &errb, cli.Options{})
	return code, out.String(), errb.String()
}

// mark-complete and repair only record a version: they work outside the
// app's folder, in GitLab's rake form too, and warn about a version that
// has no file in a migrations directory that exists.
func TestDBMarkCompletePasteForms(t *testing.T) {
	e := newDBEnv(t)
	for _, tc := range []struct {
		arg, version string
	}{
		{"20151103134857", "20151103134857"},
		{"mark_migration_complete[20151103134858]", "20151103134858"},
		{"gitlab:db:mark_migration_complete[20151103134859]", "20151103134859"},
		{"gitlab:db:mark_migration_complete:main[20151103134860]", "20151103134860"},
	} {
		code, out, errs := e.ferryNoDir("mark-complete", tc.arg)
		if code != 0 || !strings.Contains(out, "Successfully marked '"+tc.version+"' as complete on database main\n") || errs != "" {
			t.Fatalf("mark-complete %s: exit %d\n%s\n%s", tc.arg, code, out, errs)
		}
	}
	// The form left after replacing `sudo gitlab-rake gitlab:db:` with `ferry db `.
	code, out, errs := e.ferryNoDir("mark_migration_complete[20151103134861]")
	if code != 0 || !strings.Contains(out, "Successfully marked '20151103134861'") {
		t.Fatalf("ferry db mark_migration_complete[...]: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, _ := e.ferryNoDir("mark_migration_complete[20151103134861]"); code != 0 || !strings.Contains(out, "is already marked complete") {
		t.Fatalf("again: exit %d\n%s", code, out)
	}
	code, _, errs = e.ferryNoDir("mark_migration_complete:ci[20151103134862]")
	if code != 2 || !strings.Contains(errs, `names database "ci", but ferry has one database, main`) {
		t.Fatalf(":ci: exit %d\n%s", code, errs)
	}
	if code, _, errs := e.ferryNoDir("mark-complete", "mark_migration_complete[0]"); code != 2 || !strings.Contains(errs, "non-zero integer") {
		t.Fatalf("[0]: exit %d\n%s", code, errs)
	}
	// A typo's extra digits would be the newest version there is.
	if code, _, errs := e.ferryNoDir("mark-complete", strings.Repeat("20151103134857", 5)); code != 2 || !strings.Contains(errs, "70 digits, more than a version has") {
		t.Fatalf("70 digits: exit %d\n%s", code, errs)
	}
	wantApplied := []string{"20151103134857", "20151103134858", "20151103134859", "20151103134860", "20151103134861"}
	if got := strings.Join(e.applied(), " "); got != strings.Join(wantApplied, " ") {
		t.Fatalf("applied: %s", got)
	}

	// A directory that exists but has no such file: recorded, with a warning.
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	_, errs = e.wantExit(0, "mark-complete", "20151103134863")
	wantContains(t, errs, "warning: "+e.dir+" has no migration file for version 20151103134863")
	if _, errs := e.wantExit(0, "mark-complete", "1"); errs != "" {
		t.Fatalf("warned about a version that has a file: %s", errs)
	}

	// repair needs no directory either: it says there is nothing to repair.
	code, _, errs = e.ferryNoDir("repair")
	if code != 1 || !strings.Contains(errs, "not dirty") {
		t.Fatalf("repair: exit %d\n%s", code, errs)
	}
}

// db status answers "is the database ready?": 0 up to date, 1 when a
// migration is pending or the database is dirty, with the same output.
func TestDBStatusExitCodes(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	out, _ := e.wantExit(1, "status")
	wantContains(t, out, "1 pending")
	e.wantExit(1, "status", "--json")
	e.mustFerry("migrate")
	e.wantExit(0, "status")
	e.wantExit(0, "status", "--json")
	e.write("2_idx.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY a_nope ON a (nope);\n")
	e.wantExit(1, "migrate")
	out, _ = e.wantExit(1, "status")
	wantContains(t, out, "DIRTY")
	// The dry run answers as the run would: no.
	out, _ = e.wantExit(1, "migrate", "--dry-run")
	wantContains(t, out, "Note: migrate would refuse: database is dirty")
	// migrate refuses, and its downto way out says the down file is missing.
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "database is dirty: migration 2_idx", "\nIt ran outside a transaction",
		"`ferry db downto 1` (write its down file first: "+e.dir+"/2_idx.down.sql does not exist")
	// Outside the app's folder (no db/migrate): still "dirty", exit 1.
	code, out, errs := e.ferryNoDir("status")
	if code != 1 || !strings.Contains(out, "DIRTY: migration 2_idx") || strings.Contains(out, "does not exist yet") {
		t.Fatalf("status without a migrations directory on a dirty database: exit %d\n%s\n%s", code, out, errs)
	}
	// Its up file gone too (an older release's folder): downto cannot run
	// until the files are back, and the way out says so.
	up := e.dir + "/2_idx.up.sql"
	e.remove("2_idx.up.sql")
	_, errs = e.wantExit(1, "migrate")
	wantContains(t, errs, "`ferry db downto 1` (put its files back first: "+up+" is not in the migrations directory")
	out, _ = e.wantExit(1, "status")
	wantContains(t, out, "put "+up+" and its down file back first")
	e.write("2_idx.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY a_nope ON a (nope);\n")
	e.mustFerry("repair")
	e.mustFerry("mark-complete", "2")
	e.wantExit(0, "status")
	// Not dirty, but without the files pending is unknown: the applied
	// versions, then exit 2 naming the directory.
	code, out, errs = e.ferryNoDir("status")
	if code != 2 || !strings.Contains(out, "applied") || !strings.Contains(out, "pending unknown") || !strings.Contains(errs, "migrations directory db/migrate") {
		t.Fatalf("status without a migrations directory: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs = e.ferryNoDir("status", "--json"); code != 2 || !strings.Contains(out, `"pending_unknown": true`) {
		t.Fatalf("status --json without a migrations directory: exit %d\n%s\n%s", code, out, errs)
	}
}

// Sourcegraph's dirty-database runbook as written: after finishing the
// migration by hand, `migrator add-log -db=frontend -version=V` records it
// and the database is clean. Its commands ferry has no counterpart of say
// what to run instead, and a downto without a version says what it needs.
func TestDBSourcegraphRunbookForms(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);\n")
	e.write("2_b.up.sql", "-- ferry:no-transaction\nCREATE TABLE b (id int);\nSELECT no_such_column FROM a;\n")
	e.wantExit(1, "migrate")
	e.wantExit(1, "status")
	// Finished by hand; then the runbook's step.
	out := e.mustFerry("add-log", "-db=main", "-version=2")
	wantContains(t, out, "Successfully marked '2' as complete on database main")
	out = e.mustFerry("status")
	wantContains(t, out, "Current version: 2; 0 pending.")
	if strings.Contains(out, "DIRTY") {
		t.Fatalf("still dirty after add-log:\n%s", out)
	}
	for args, want := range map[string]string{
		"add-log -up=false -version=2":         "ferry reverts a migration only by running its down file",
		"add-log -db=main":                     "add-log needs -version=VERSION",
		"drift -db=frontend -version=v3.36.0":  "drift is Sourcegraph's migrator command, not ferry's: ferry does not compare",
		"upgrade --from=v3.36.0 --to=v3.38.0":  "`ferry db migrate`",
		"validate -db=all":                     "`ferry db status` exits 1",
		"downto":                               "downto needs the version to go back to: downto VERSION (or -target=VERSION), or --to-release DIR",
		"run-out-of-band-migrations -db=front": "`ferry bbm status`, `ferry bbm wait`",
	} {
		_, errs := e.wantExit(2, strings.Fields(args)...)
		wantContains(t, firstLine(errs), want)
	}
}
