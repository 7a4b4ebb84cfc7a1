package test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
)

// sgSchemas are Sourcegraph's three databases, each with the migrations
// of the current release (versions) and of the older release rolled back
// to (old).
var sgSchemas = []struct {
	name     string
	versions []string
	old      []string
}{
	{"frontend", []string{"1528395960", "1528395961", "1528395962", "1528395963"}, []string{"1528395960", "1528395961"}},
	{"codeintel", []string{"1000000020", "1000000021"}, []string{"1000000020", "1000000021"}},
	{"codeinsights", []string{"1000000030", "1000000031", "1000000032"}, []string{"1000000030"}},
}

func sgWriteCurrent(e *multiEnv) {
	for _, s := range sgSchemas {
		for _, v := range s.versions {
			tbl := s.name + "_t" + v
			e.write(s.name, v+"_m.up.sql", "CREATE TABLE "+tbl+" (id int);\n")
			e.write(s.name, v+"_m.down.sql", "DROP TABLE "+tbl+";\n")
		}
	}
}

// sgWriteOld writes the older release's migrations as Sourcegraph lays
// them out: migrations/<schema>/<version>/{up,down}.sql and metadata.yaml.
func sgWriteOld(t *testing.T, root string) string {
	dir := filepath.Join(root, "v3.36.0", "migrations")
	for _, s := range sgSchemas {
		for i, v := range s.old {
			name := v
			if i == 0 {
				name = v + "_squashed_migrations" // older releases named them
			}
			d := filepath.Join(dir, s.name, name)
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			for f, body := range map[string]string{"up.sql": "-- old\n", "down.sql": "-- old\n", "metadata.yaml": "name: m\nparents: []\n"} {
				if err := os.WriteFile(filepath.Join(d, f), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return dir
}

// Sourcegraph's rollback runbook with three databases: `ferry db leaves`
// on the older release's migrations gives each schema's leaf, and
// `downto --to-release` makes every database what the old code expects;
// the result is the same as the runbook done by hand, one
// `downto -db=X -target=LEAF` per schema. A step that cannot be reverted
// (irreversible) is named before anything runs, and nothing runs in any
// database.
func TestDBMultiSourcegraphRollback(t *testing.T) {
	names := []string{"frontend", "codeintel", "codeinsights"}
	ferry := newMultiEnv(t, names...)
	hand := newMultiEnv(t, names...)
	onlyConfigFile(t)
	for _, e := range []*multiEnv{ferry, hand} {
		sgWriteCurrent(e)
		out, _ := e.want(0, "db", "up", "-db=all")
		everyLineNamed(t, out, names...)
	}
	old := sgWriteOld(t, ferry.root)

	out, _ := ferry.want(0, "db", "leaves", old)
	leaves := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, rest, _ := strings.Cut(l, ": ")
		leaves[name], _, _ = strings.Cut(rest, "\t")
	}
	want := map[string]string{"frontend": "1528395961", "codeintel": "1000000021", "codeinsights": "1000000030"}
	for n, v := range want {
		if leaves[n] != v {
			t.Fatalf("leaves: %s = %q, want %s\n%s", n, leaves[n], v, out)
		}
	}

	// With no database configured (a laptop), the subdirectories answer.
	var lo, le bytes.Buffer
	if code := cli.Main(ferry.ctx, []string{"db", "leaves", old}, &lo, &le, cli.Options{}); code != 0 || lo.String() != out {
		t.Fatalf("leaves without configuration: exit %d\n%s\n%s\nwant\n%s", code, lo.String(), le.String(), out)
	}

	// By hand, as Sourcegraph's runbook has it.
	for _, n := range names {
		out, _ := hand.want(0, "db", "downto", "-db="+n, "-target="+leaves[n])
		everyLineNamed(t, out, n)
	}

	// Several databases: --db is required.
	_, errs := ferry.want(2, "db", "downto", "--to-release", old)
	wantContains(t, errs, "Please specify the database", "codeinsights, codeintel, frontend")

	// An irreversible step in codeinsights: the plan names it and nothing
	// is reverted anywhere.
	ferry.write("codeinsights", "1000000032_m.down.sql", "-- ferry:irreversible drops the series data\nDROP TABLE codeinsights_t1000000032;\n")
	out, errs = ferry.want(1, "db", "downto", "--to-release", old, "--db", "all")
	everyLineNamed(t, out, names...)
	wantContains(t, out, "frontend: To revert, newest first (2):", "frontend:   1528395963  m (1528395963_m.down.sql)",
		"codeintel: Nothing to revert", "codeinsights:   1000000032  CANNOT REVERT: 1000000032_m is irreversible: drops the series data")
	wantContains(t, errs, "ferry: codeinsights: ", "nothing was reverted in any database")
	if got := ferry.applied("frontend"); len(got) != 4 {
		t.Fatalf("a refused plan reverted frontend: %v", got)
	}
	ferry.write("codeinsights", "1000000032_m.down.sql", "DROP TABLE codeinsights_t1000000032;\n")

	// Dry run: the plan and SQL, nothing changed.
	out, _ = ferry.want(0, "db", "downto", "--to-release", old, "--db", "all", "--dry-run")
	wantContains(t, out, "frontend: Release "+filepath.Join(old, "frontend")+" holds 2 migrations (sourcegraph layout), newest 1528395961.",
		"codeinsights: DROP TABLE codeinsights_t1000000031;")
	if got := ferry.applied("codeinsights"); len(got) != 3 {
		t.Fatalf("dry run reverted: %v", got)
	}

	out, _ = ferry.want(0, "db", "downto", "--to-release", old, "--db", "all")
	wantContains(t, out, "frontend: Reverted 2 migration(s)", "codeintel: Nothing to revert", "codeinsights: Reverted 2 migration(s)")

	for _, n := range names {
		if a, b := ferry.applied(n), hand.applied(n); !slices.Equal(a, b) {
			t.Errorf("%s: schema_migrations %v with --to-release, %v by hand", n, a, b)
		}
		if a, b := ferry.tables(n), hand.tables(n); !slices.Equal(a, b) {
			t.Errorf("%s: tables %v with --to-release, %v by hand", n, a, b)
		}
	}
	if got := strings.Join(ferry.applied("frontend"), " "); got != "1528395960 1528395961" {
		t.Fatalf("frontend applied %q", got)
	}
	// Again: nothing left to do.
	out, _ = ferry.want(0, "db", "downto", "--to-release", old, "--db", "frontend")
	wantContains(t, out, "frontend: Nothing to revert")
}

// One database (DATABASE_URL alone): leaves and --to-release read the
// older release's directory itself, output is not prefixed, and every
// step that cannot be reverted is named, with its reason, before
// anything runs.
func TestDBToReleaseOneDatabase(t *testing.T) {
	e := newDBEnv(t)
	for _, v := range []string{"10", "20", "30", "40"} {
		e.write(v+"_t"+v+".up.sql", "CREATE TABLE t"+v+" (id int);\n")
		e.write(v+"_t"+v+".down.sql", "DROP TABLE t"+v+";\n")
	}
	e.mustFerry("migrate")
	old := t.TempDir()
	for _, f := range []string{"10_t10.up.sql", "10_t10.down.sql", "20_t20.up.sql", "25_gone.up.sql"} {
		if err := os.WriteFile(filepath.Join(old, f), []byte("-- old\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := e.mustFerry("leaves", old)
	if !strings.HasPrefix(out, "main: 25\t("+old+": 3 migrations)") {
		t.Fatalf("leaves: %q", out)
	}

	// 40 has no down file, 30 is irreversible: both named, nothing runs.
	e.remove("40_t40.down.sql")
	e.write("30_t30.down.sql", "-- ferry:irreversible\nDROP TABLE t30;\n")
	out, errs := e.wantExit(1, "downto", "--to-release", old)
	wantContains(t, out, "40  CANNOT REVERT: 40_t40 has no down file", "30  CANNOT REVERT: 30_t30 is irreversible: marked -- ferry:irreversible",
		"Note: the release holds 25, not applied here")
	wantContains(t, errs, "nothing was reverted")
	if strings.Contains(out, "main:") {
		t.Fatalf("one database: output is not prefixed:\n%s", out)
	}
	// downto VERSION refuses the irreversible one too.
	_, errs = e.wantExit(1, "downto", "20")
	wantContains(t, errs, "is irreversible")
	if got := strings.Join(e.applied(), " "); got != "10 20 30 40" {
		t.Fatalf("a refused plan reverted: %s", got)
	}

	e.write("40_t40.down.sql", "DROP TABLE t40;\n")
	e.write("30_t30.down.sql", "DROP TABLE t30;\n")
	out = e.mustFerry("downto", "--to-release", old)
	wantContains(t, out, "== 40 t40: reverting ==", "== 30 t30: reverting ==", "Reverted 2 migration(s)")
	if got := strings.Join(e.applied(), " "); got != "10 20" {
		t.Fatalf("applied after --to-release: %s", got)
	}
	if e.exists("t30") || e.exists("t40") || !e.exists("t20") {
		t.Fatal("tables do not match the release")
	}
	// A directory with no migrations is refused: a typo must not revert everything.
	_, errs = e.wantExit(2, "downto", "--to-release", t.TempDir())
	wantContains(t, errs, "holds no migrations")
}
