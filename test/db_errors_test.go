package test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
)

// Bad input exits 2 with a message naming the bad argument or file; a
// failure (the database, a migration, the state) exits 1.
func TestDBExitCodes(t *testing.T) {
	e := newDBEnv(t)
	dumps := t.TempDir()
	garbage := filepath.Join(dumps, "garbage.dump")
	if err := os.WriteFile(garbage, []byte("this is not a dump\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// path names a file of the case's own directory in want.
	path := func(name string) string { return filepath.Join("{dir}", name) }
	// Every command that reads --dir must reject a bad directory alike.
	dirCmds := [][]string{{"migrate"}, {"migrate", "--dry-run"}, {"status"}, {"status", "--json"}, {"downto", "0"},
		{"mark-complete", "5"}, {"repair"}}

	type tc struct {
		name  string
		files map[string]string // written into a fresh migrations dir
		args  []string
		code  int
		want  []string
		// fresh: a database of its own, after `ferry db <before...>`.
		fresh  bool
		before []string
	}
	c5 := func(name string, files map[string]string, args []string, code int, want []string) tc {
		return tc{name: name, files: files, args: args, code: code, want: want}
	}
	good := map[string]string{"1_a.up.sql": "CREATE TABLE a (id int);", "1_a.down.sql": "DROP TABLE a;"}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	var cases []tc
	for _, v := range []string{"abc", "12a", "1.5", "", " 1", "0x10"} {
		cases = append(cases,
			c5("migrate --to "+v, good, []string{"migrate", "--to", v}, 2, []string{"is not a version"}),
			c5("downto "+v, good, []string{"downto", v}, 2, []string{"is not a version"}),
			c5("mark-complete "+v, good, []string{"mark-complete", v}, 2, []string{"is not a version"}),
		)
		if v != "" {
			cases = append(cases, c5("repair "+v, good, []string{"repair", v}, 2, []string{"is not a version"}))
		}
	}
	cases = append(cases,
		c5("downto without VERSION", good, []string{"downto"}, 2, []string{"downto needs the version to go back to"}),
		c5("mark-complete 0", good, []string{"mark-complete", "0"}, 2, []string{"non-zero integer"}),
		c5("migrate --to unknown", good, []string{"migrate", "--to", "7"}, 2, []string{"7 has no migration file"}),
		c5("downto unknown", good, []string{"downto", "7"}, 2, []string{"7 is neither a migration"}),
		c5("unknown flag", good, []string{"migrate", "--frobnicate"}, 2, []string{"unknown flag"}),
		c5("bad --lock-timeout", good, []string{"migrate", "--lock-timeout", "soon"}, 2, []string{"lock-timeout"}),
		c5("restore missing file", good, []string{"restore", filepath.Join(dumps, "nope.dump"), "--yes"}, 2, []string{"nope.dump", "no such file"}),
		c5("restore not a dump", good, []string{"restore", garbage, "--yes"}, 2, []string{garbage, "not a pg_dump custom-format archive"}),
		c5("restore a directory", good, []string{"restore", dumps, "--yes"}, 2, []string{dumps, "is a directory"}),
		c5("backup into missing dir", good, []string{"backup", filepath.Join(dumps, "no", "x.dump")}, 2, []string{"directory " + filepath.Join(dumps, "no") + " does not exist"}),
		c5("backup onto a directory", good, []string{"backup", dumps}, 2, []string{"is a directory"}),
		// Failures: exit 1.
		tc{"migration fails", with(map[string]string{"2_b.up.sql": "SELECT no_such_column FROM a;"}), []string{"migrate"}, 1, []string{"2_b (up) failed with", "no_such_column"}, true, nil},
		tc{"repair when clean", good, []string{"repair"}, 1, []string{"not dirty"}, true, nil},
		tc{"downto without down file", with(map[string]string{"2_b.up.sql": "SELECT 1;"}), []string{"downto", "0"}, 1, []string{path("2_b.down.sql") + " does not exist"}, true, []string{"migrate"}},
		tc{"dirty", with(map[string]string{"2_b.up.sql": "-- ferry:no-transaction\nSELECT no_such_column FROM a;\n"}), []string{"migrate"}, 1, []string{"database is dirty", "`ferry db downto 1`"}, true, []string{"migrate", "--to", "1"}},
	)
	for _, bad := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"no version", map[string]string{"create_users.up.sql": ""}, []string{path("create_users.up.sql"), "<version>_<name>.up.sql"}},
		{"dash", map[string]string{"1-a.up.sql": ""}, []string{path("1-a.up.sql"), "<version>_<name>.up.sql"}},
		{"no direction", map[string]string{"2_b.sql": ""}, []string{path("2_b.sql"), "<version>_<name>.up.sql"}},
		{"bad direction", map[string]string{"2_b.upp.sql": ""}, []string{path("2_b.upp.sql"), "<version>_<name>.up.sql"}},
		{"no name", map[string]string{"2_.up.sql": ""}, []string{path("2_.up.sql")}},
		{"zero", map[string]string{"0_z.up.sql": ""}, []string{path("0_z.up.sql"), "must not be zero"}},
		{"duplicate version", map[string]string{"01_a.up.sql": ""}, []string{"duplicate version 1", path("01_a.up.sql"), path("1_a.up.sql")}},
		{"duplicate down", map[string]string{"001_a.down.sql": ""}, []string{"duplicate version 1", path("001_a.down.sql"), path("1_a.down.sql")}},
		{"two names", map[string]string{"1_b.up.sql": ""}, []string{"version 1 has two names", path("1_a.up.sql"), path("1_b.up.sql")}},
		{"down only", map[string]string{"2_b.down.sql": ""}, []string{path("2_b.down.sql"), "has no up file"}},
		{"bad directive", map[string]string{"2_b.up.sql": "SELECT 1;\n-- ferry:no-transaction\n"}, []string{path("2_b.up.sql"), "line 2", "must be the first line"}},
		{"bad bbm json", map[string]string{"2_b.up.sql": "-- ferry:require-bbm C t id [[\n"}, []string{path("2_b.up.sql"), "ARGS_JSON"}},
	} {
		for _, args := range dirCmds {
			cases = append(cases, c5(bad.name+"/"+strings.Join(args, " "), with(bad.files), args, 2, bad.want))
		}
	}
	for _, args := range dirCmds {
		cases = append(cases, c5("missing dir/"+strings.Join(args, " "), nil, args, 2, []string{"migrations directory", "does-not-exist", "set --dir"}))
	}

	shared := e
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Bad input shares one database (and must not change it);
			// each case gets its own directory.
			e := &dbEnv{t: t, ctx: shared.ctx, url: shared.url, pool: shared.pool, dir: t.TempDir()}
			if c.fresh {
				e = newDBEnv(t)
			}
			want := make([]string, len(c.want))
			for i, w := range c.want {
				want[i] = strings.ReplaceAll(w, "{dir}", e.dir)
			}
			if c.files == nil {
				e.dir = filepath.Join(e.dir, "does-not-exist")
			}
			for name, sql := range c.files {
				e.write(name, sql)
			}
			if c.before != nil {
				e.mustFerry(c.before...)
				if c.args[0] == "migrate" {
					e.wantExit(1, c.args...) // the first failure
				}
			}
			_, errs := e.wantExit(c.code, c.args...)
			wantContains(t, errs, want...)
			if strings.Count(strings.TrimSpace(errs), "\n") > 8 {
				t.Errorf("error is not short:\n%s", errs)
			}
		})
	}
	if shared.exists("a") {
		t.Fatal("a command with bad input ran a migration")
	}
}

// Without --dir the default db/migrate is used and its absence named;
// an unreachable database is a failure (1), a malformed URL bad input (2).
func TestDBExitCodesEnvironment(t *testing.T) {
	env := newDBEnv(t)
	ctx := env.ctx
	run := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := cli.Main(ctx, append([]string{"db"}, args...), &out, &errb, cli.Options{})
		return code, errb.String()
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "1_a.up.sql"), []byte("SELECT 1;"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status", "--database-url", env.url}, 2, "migrations directory db/migrate"},
		{[]string{"status", "--dir", dir, "--database-url", "postgres://ferry@127.0.0.1:1/nope?connect_timeout=2"}, 1, "cannot reach PostgreSQL"},
		{[]string{"backup", filepath.Join(dir, "x.dump"), "--database-url", "postgres://ferry@127.0.0.1:1/nope?connect_timeout=2"}, 1, "cannot reach PostgreSQL"},
		{[]string{"status", "--dir", dir, "--database-url", "postgres://%zz"}, 2, ""},
	} {
		code, errs := run(append(c.args, "--log-level", "error")...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("ferry db %s: exit %d, want %d with %q\n%s", strings.Join(c.args, " "), code, c.code, c.want, errs)
		}
	}
}
