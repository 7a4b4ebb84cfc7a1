package cli

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	pasteArgs = `[["id"]\, ["id_convert_to_bigint"]]` // as the shell passes '[["id"]\, ["id_convert_to_bigint"]]'
	pasteCfg  = `CopyColumnUsingBackgroundMigrationJob,events,id,` + pasteArgs
)

// Every way a runbook's rake task reaches ferry becomes the subcommand
// followed by the task, which the subcommand reads.
func TestRewriteRake(t *testing.T) {
	t.Parallel()
	root := (&App{}).rootCmd()
	vf := takesValue(root.PersistentFlags())
	for _, tc := range []struct{ in, want []string }{
		{[]string{"bbm", "finalize[" + pasteCfg + "]"}, []string{"bbm", "finalize", "finalize[" + pasteCfg + "]"}},
		{[]string{"--log-level", "error", "bbm", "gitlab:background_migrations:finalize[" + pasteCfg + "]"},
			[]string{"--log-level", "error", "bbm", "finalize", "gitlab:background_migrations:finalize[" + pasteCfg + "]"}},
		{[]string{"bbm", "finalize:main[" + pasteCfg + "]", "--no-progress"}, []string{"bbm", "finalize", "finalize:main[" + pasteCfg + "]", "--no-progress"}},
		{[]string{"bbm", "show[main_3]"}, []string{"bbm", "show", "show[main_3]"}},
		{[]string{"bbm", "gitlab:background_migrations:status"}, []string{"bbm", "status"}},
		// bbm's database names are checked once the configuration is read.
		{[]string{"bbm", "finalize:ci[" + pasteCfg + "]"}, []string{"bbm", "finalize", "finalize:ci[" + pasteCfg + "]"}},
		{[]string{"bbm", "gitlab:background_migrations:finalize:ci[" + pasteCfg + "]"},
			[]string{"bbm", "finalize", "gitlab:background_migrations:finalize:ci[" + pasteCfg + "]"}},
		{[]string{"bbm", "status:main"}, []string{"bbm", "status", "--db", "main"}},
		{[]string{"bbm", "--db", "ci", "pause[ci_85]"}, []string{"bbm", "--db", "ci", "pause", "pause[ci_85]"}},
		{[]string{"db", "mark_migration_complete[20151103134857]"}, []string{"db", "mark-complete", "mark_migration_complete[20151103134857]"}},
		{[]string{"db", "gitlab:db:mark_migration_complete:main[1]"}, []string{"db", "mark-complete", "gitlab:db:mark_migration_complete:main[1]"}},
		// retry and mark-finished, as rake spells them and as ferry does.
		{[]string{"bbm", "retry[11]"}, []string{"bbm", "retry", "retry[11]"}},
		{[]string{"bbm", "mark-finished[10]", "--yes"}, []string{"bbm", "mark-finished", "mark-finished[10]", "--yes"}},
		{[]string{"bbm", "mark_finished[" + pasteCfg + "]", "--yes"}, []string{"bbm", "mark-finished", "mark_finished[" + pasteCfg + "]", "--yes"}},
		// Left alone: plain subcommands, their arguments, other groups.
		{[]string{"bbm", "finalize", "finalize[" + pasteCfg + "]"}, []string{"bbm", "finalize", "finalize[" + pasteCfg + "]"}},
		{[]string{"bbm", "show", "1"}, []string{"bbm", "show", "1"}},
		{[]string{"bm", "finalize[x]"}, []string{"bm", "finalize[x]"}},
		{[]string{"bbm", "nosuchtask[1]"}, []string{"bbm", "nosuchtask[1]"}},
	} {
		got, err := rewriteRake(tc.in, vf)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range [][]string{{"db", "mark_migration_complete:ci[1]"}} {
		if _, err := rewriteRake(in, vf); !errors.Is(err, ErrOtherDatabase) || !strings.Contains(err.Error(), `"ci"`) ||
			!strings.Contains(err.Error(), "one database, main") {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestParseRefForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		id   int64
	}{
		{[]string{"7"}, 7}, {[]string{"main_7"}, 7}, {[]string{"show[7]"}, 7}, {[]string{"gitlab:background_migrations:show:main[main_7]"}, 7},
		{[]string{"mark-finished[7]"}, 7}, {[]string{"retry[7]"}, 7},
	} {
		ref, err := parseRef(tc.args)
		if err != nil || ref.id != tc.id || ref.cfg != nil {
			t.Errorf("%q: %+v %v", tc.args, ref, err)
		}
	}
	for _, args := range [][]string{
		{"CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`},
		{"finalize[" + pasteCfg + "]"},
		{"show[" + pasteCfg + "]"},
		{"mark-finished[" + pasteCfg + "]"},
		{`{"job_class_name":"CopyColumnUsingBackgroundMigrationJob","table_name":"events","column_name":"id","job_arguments":[["id"],["id_convert_to_bigint"]]}`},
		// As `ferry bbm status` prints it, and rake's form without the brackets.
		{`CopyColumnUsingBackgroundMigrationJob,events,id,[["id"],["id_convert_to_bigint"]]`},
		{pasteCfg},
	} {
		ref, err := parseRef(args)
		if err != nil || ref.cfg == nil || ref.cfg.Table != "events" || strings.ReplaceAll(string(ref.cfg.Args), " ", "") != `[["id"],["id_convert_to_bigint"]]` {
			t.Errorf("%q: %+v %v", args, ref.cfg, err)
		}
	}
	for _, bad := range []string{"ci_7", "show[1,2]", "show:ci[7]", "0", "{}", "Foo_bar", "Copy,events,id"} {
		if _, err := parseRef([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// What each refusal says leads somewhere: never a ":ci" nobody typed.
	for bad, want := range map[string]string{
		"ci_7":           `ci_7 names database "ci", but ferry has one database, main (DATABASE_URL); write the id as 7 or main_7`,
		"Foo_bar":        `migration id must be a positive integer, got "Foo_bar"; a migration is named by ID, CLASS TABLE COLUMN ARGS_JSON`,
		"Copy,events,id": `"Copy,events,id" has 3 comma-separated parts; a configuration has 4, as ` + "`ferry bbm status`" + ` prints it`,
	} {
		if _, err := parseRef([]string{bad}); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "drop the :") {
			t.Errorf("%q: %v; want %q", bad, err, want)
		}
	}
}

// The runbook's forms end to end: finalize pasted with and without the
// rake prefix and :main; show and mark-finished by configuration; a
// database ferry does not have is refused naming the configured one.
func TestBBMPasteForms(t *testing.T) {
	c := newBBMCLI(t)
	cfg := []string{"CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`}
	if code, _, errs := c.run(append([]string{"bbm", "queue"}, cfg...)...); code != 0 {
		t.Fatal(errs)
	}
	statusLine := strings.Join(cfg, ",") // as `ferry bbm status` prints it
	for _, show := range [][]string{cfg, {"finalize[" + pasteCfg + "]"}, {"show[main_1]"}, {"main_1"}, {statusLine}, {pasteCfg}} {
		code, out, errs := c.run(append([]string{"bbm", "show"}, show...)...)
		if code != 0 || !strings.Contains(out, "Id  ") || !strings.Contains(out, "Finalize with") {
			t.Fatalf("show %q: %d %s %s", show, code, out, errs)
		}
	}
	if code, _, errs := c.run("bbm", "show["+pasteCfg+"]"); code != 0 {
		t.Fatalf("show[...]: %d %s", code, errs)
	}
	code, _, errs := c.run("bbm", "finalize:ci["+pasteCfg+"]")
	if code != 2 || !strings.Contains(firstLine(errs), `names database "ci", but ferry has one database, main`) {
		t.Fatalf("finalize:ci: %d %s", code, errs)
	}
	if code, out, errs := c.run("bbm", "finalize", "--no-progress", "finalize:ci["+pasteCfg+"]"); code != 2 {
		t.Fatalf("finalize finalize:ci: %d %s %s", code, out, errs)
	}
	if code, out, errs := c.run("bbm", "gitlab:background_migrations:finalize:main["+pasteCfg+"]", "--no-progress"); code != 0 || !strings.Contains(out, "Done.") {
		t.Fatalf("gitlab:background_migrations:finalize:main: %d %s %s", code, out, errs)
	}
	// Again, in the form left after replacing the rake prefix: already done.
	if code, _, errs := c.run("bbm", "finalize["+pasteCfg+"]", "--no-progress"); code != 0 || !strings.Contains(errs, "already finished") {
		t.Fatalf("finalize[...]: %d %s", code, errs)
	}
	// Finished: show offers no finalize.
	if code, out, errs := c.run("bbm", "show", "1"); code != 0 || strings.Contains(out, "Finalize with") || strings.Contains(out, "Finish with") {
		t.Fatalf("show of a finished migration: %d %s %s", code, out, errs)
	}

	// mark-finished by configuration, in the rake form.
	if _, err := c.pool.Exec(context.Background(), `ALTER TABLE events ADD COLUMN other bigint`); err != nil {
		t.Fatal(err)
	}
	other := `[["id"],["other"]]`
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", other); code != 0 {
		t.Fatal(errs)
	}
	rake := `finalize[CopyColumnUsingBackgroundMigrationJob,events,id,[["id"]\,["other"]]]`
	if code, _, errs := c.run("bbm", "mark-finished", rake); code != 2 || !strings.Contains(errs, "refusing to mark migration 2 finished without --yes") {
		t.Fatalf("mark-finished without --yes: %d %s", code, errs)
	}
	if code, out, errs := c.run("bbm", "mark-finished", "CopyColumnUsingBackgroundMigrationJob", "events", "id", other, "--yes"); code != 0 || !strings.HasPrefix(out, "finished |") {
		t.Fatalf("mark-finished by configuration: %d %s %s", code, out, errs)
	}
	if code, _, errs := c.run("bbm", "show", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["nope"],["other"]]`); code != 2 || !strings.Contains(errs, "not found") {
		t.Fatalf("show of an unknown configuration: %d %s", code, errs)
	}
}

// A migration whose class this binary does not have: check, show and
// finalize point at mark-finished (with what it does not do), never at a
// finalize that would fail.
func TestBBMUnregisteredClassHints(t *testing.T) {
	c := newBBMCLI(t)
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`, "--paused"); code != 0 {
		t.Fatal(errs)
	}
	if _, err := c.pool.Exec(context.Background(), `UPDATE batched_background_migrations SET job_class_name = 'Gone::Backfill'`); err != nil {
		t.Fatal(err)
	}
	code, out, _ := c.run("bbm", "check")
	if code != 1 || !strings.Contains(out, "ferry bbm mark-finished 1 --yes") || strings.Contains(out, "\tferry bbm finalize") ||
		!strings.Contains(out, "Class Gone::Backfill is not registered") || !strings.Contains(out, "NOT migrated") {
		t.Fatalf("check: %d\n%s", code, out)
	}
	if _, out, _ := c.run("bbm", "show", "1"); !regexp.MustCompile(`Finish with +ferry bbm mark-finished 1 --yes`).MatchString(out) || strings.Contains(out, "Finalize with") {
		t.Fatalf("show:\n%s", out)
	}
	code, _, errs := c.run("bbm", "finalize", "--no-progress", "1")
	if code != 2 || !strings.Contains(errs, "ferry bbm mark-finished 1 --yes") || !strings.Contains(errs, "NOT migrated") {
		t.Fatalf("finalize: %d %s", code, errs)
	}
	// No estimate of a run this binary cannot make, paused or active; once
	// active, stalled with the way out instead of an ETA.
	if _, out, _ := c.run("bbm", "status"); strings.Contains(out, "estimate") || !strings.Contains(out, "paused") {
		t.Fatalf("status, paused:\n%s", out)
	}
	if code, _, errs := c.run("bbm", "resume", "1"); code != 0 {
		t.Fatal(errs)
	}
	_, out, _ = c.run("bbm", "status")
	if strings.Contains(out, "estimate") || strings.Contains(out, "ETA") ||
		!strings.Contains(out, "class Gone::Backfill is not registered in this ferry binary") || !strings.Contains(out, "`ferry bbm mark-finished 1 --yes`") {
		t.Fatalf("status, active:\n%s", out)
	}
}

// Job arguments mangled by pasting get a hint that says how to paste them.
func TestParseRefPasteHints(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`[[id],[id_convert_to_bigint]]`:      "the shell removed its double quotes",
		`[["id"]\,["id_convert_to_bigint"]]`: `GitLab escapes the comma as \, only inside rake's brackets`,
	} {
		_, err := parseRef([]string{"CopyColumnUsingBackgroundMigrationJob", "events", "id", in})
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want exit 2 saying %q", in, err, want)
		}
	}
}
