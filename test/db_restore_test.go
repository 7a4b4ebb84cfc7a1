package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/cli"
)

// A failed upgrade that created far more than tables: a schema with a
// table, an extension, an enum, a composite type, a domain, functions (one
// an overload of a function the backup has), a procedure, and on a table
// the backup has an extra column, index, trigger and a foreign key to
// another kept table. Restore drops exactly those (printing them), keeps
// everything the backup has (its extension, enum, domain and function
// included), and the corrected upgrade, whose plain CREATEs would fail on
// any leftover, then succeeds.
func TestDBRestoreDropsEveryObjectNotInBackup(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_v1.up.sql", `CREATE EXTENSION citext;
CREATE TYPE user_state AS ENUM ('active', 'blocked');
CREATE DOMAIN email AS citext CHECK (VALUE LIKE '%@%');
CREATE TABLE orgs (id bigserial PRIMARY KEY, name text);
CREATE TABLE users (id bigserial PRIMARY KEY, email email NOT NULL, state user_state NOT NULL DEFAULT 'active');
CREATE INDEX users_email_idx ON users (email);
CREATE FUNCTION normalize_email(e text) RETURNS text LANGUAGE sql AS 'SELECT lower(e)';
CREATE FUNCTION state_label(s user_state, verbose boolean) RETURNS text LANGUAGE sql AS 'SELECT s::text';
CREATE SCHEMA reporting;
CREATE VIEW reporting.active_users AS SELECT id FROM users WHERE state = 'active';
`)
	e.mustFerry("migrate")
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO orgs (name) VALUES ('o'); INSERT INTO users (email) VALUES ('A@example.com'), ('b@example.com')`); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "v1.dump")
	e.mustFerry("backup", dump)

	upgrade := `CREATE EXTENSION pgcrypto;
CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigserial PRIMARY KEY, user_id bigint, at timestamptz DEFAULT now());
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TYPE pair AS (a int, b int);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE FUNCTION normalize_email(e text, strict boolean) RETURNS text LANGUAGE sql AS 'SELECT lower(e)';
CREATE PROCEDURE cleanup(days posint) LANGUAGE sql AS 'SELECT 1';
ALTER TABLE users ADD COLUMN nickname text;
CREATE INDEX users_nickname_idx ON users (nickname);
CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE users ADD COLUMN org_id bigint;
ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs;
`
	e.write("2_upgrade.up.sql", upgrade)
	e.write("3_broken.up.sql", "UPDATE users SET nickname = no_such_column;\n")
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "3_broken (up) failed with", "no_such_column")

	out, _ := e.wantExit(2, "restore", dump)
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(l, "Would drop "); ok {
			got = append(got, strings.TrimSuffix(s, " (not in the backup)"))
		}
	}
	want := []string{
		"foreign key users_org_fk on table public.users",
		"table audit.events",
		"sequence audit.events_id_seq",
		"procedure public.cleanup(public.posint)",
		"function public.normalize_email(text, boolean)",
		"function public.touch()",
		"domain public.posint",
		"type public.mood",
		"type public.pair",
		"extension pgcrypto",
		"schema audit",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("restore plan:\n%s\nwant exactly, in order:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	out = e.mustFerry("restore", dump, "--yes")
	wantContains(t, out, "Dropped schema audit (not in the backup)", "Dropped function public.touch()", "Dropped type public.mood", "Restored")
	for _, q := range []string{
		`SELECT count(*) FROM pg_namespace WHERE nspname = 'audit'`,
		`SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'`,
		`SELECT count(*) FROM pg_type WHERE typname IN ('mood', 'pair', 'posint')`,
		`SELECT count(*) FROM pg_proc WHERE proname IN ('touch', 'cleanup')`,
		`SELECT count(*) FROM pg_proc WHERE proname = 'normalize_email' AND pronargs = 2`,
		`SELECT count(*) FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname IN ('nickname', 'org_id')`,
		`SELECT count(*) FROM pg_indexes WHERE indexname = 'users_nickname_idx'`,
		`SELECT count(*) FROM pg_trigger WHERE tgname = 'users_touch'`,
		`SELECT count(*) FROM pg_constraint WHERE conname = 'users_org_fk'`,
	} {
		var n int
		if err := e.pool.QueryRow(e.ctx, q).Scan(&n); err != nil || n != 0 {
			t.Errorf("left over by the failed upgrade after restore: %s = %d, %v", q, n, err)
		}
	}
	// Everything of v1 is there, with its data.
	var v1 int
	if err := e.pool.QueryRow(e.ctx, `SELECT (SELECT count(*) FROM users WHERE email = 'a@EXAMPLE.com')
		+ (SELECT count(*) FROM reporting.active_users) + (SELECT count(*) FROM pg_proc WHERE proname IN ('normalize_email', 'state_label'))
		+ (SELECT count(*) FROM pg_extension WHERE extname = 'citext') + (SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email_idx')`).Scan(&v1); err != nil || v1 != 1+2+2+1+1 {
		t.Fatalf("v1 objects after restore: %d, %v", v1, err)
	}
	if got := e.applied(); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("schema_migrations after restore: %v", got)
	}
	// Nothing more to drop: the v1 objects (extension members, the array
	// and row types, the enum, domain, functions, schema) all match.
	out, _ = e.wantExit(2, "restore", dump)
	wantContains(t, out, "Would drop nothing: every object of database")

	e.write("3_broken.up.sql", "UPDATE users SET nickname = email;\n")
	code, out, errs := e.ferry("migrate")
	if code != 0 || strings.Contains(errs, "already exists") {
		t.Fatalf("re-upgrade after restore: exit %d\n%s\n%s", code, out, errs)
	}
	wantContains(t, out, "2 upgrade: migrated", "3 broken: migrated")
}

// dbSnapshot is the database as a list of lines: every user relation
// (with its OID when withOIDs, so a table dropped and recreated shows),
// column, function, type, constraint, trigger, schema and extension, the
// md5 of every table's rows and every sequence's position.
// withoutRecords drops the data lines of ferry's record tables from a
// snapshot.
func withoutRecords(snap []string) []string {
	return slices.DeleteFunc(slices.Clone(snap), func(l string) bool {
		return strings.HasPrefix(l, "data public.ferry_migration_log") || strings.HasPrefix(l, "data public.ferry_web_actions")
	})
}

func (e *dbEnv) snapshot(withOIDs bool) []string {
	e.t.Helper()
	const user = `NOT IN ('pg_catalog', 'information_schema') AND %s NOT LIKE 'pg\_toast%%' AND %s NOT LIKE 'pg\_temp%%'`
	u := func(col string) string { return col + " " + strings.ReplaceAll(user, "%s", col) }
	q := `SELECT 'rel ' || c.relkind::text || ' ' || n.nspname || '.' || c.relname || CASE WHEN $1 THEN ' oid ' || c.oid ELSE '' END
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ` + u("n.nspname") + `
	UNION ALL SELECT 'col ' || n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ` + u("n.nspname") + `
	UNION ALL SELECT 'fn ' || p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ` + u("n.nspname") + `
	UNION ALL SELECT 'type ' || t.typtype::text || ' ' || n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE ` + u("n.nspname") + `
	UNION ALL SELECT 'con ' || c.conrelid::regclass || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE ` + u("n.nspname") + `
	UNION ALL SELECT 'trg ' || tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
	UNION ALL SELECT 'ns ' || nspname FROM pg_namespace n WHERE ` + u("n.nspname") + `
	UNION ALL SELECT 'ext ' || extname FROM pg_extension
	ORDER BY 1`
	rows, err := e.pool.Query(e.ctx, q, withOIDs)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	// The data of every table and the position of every sequence.
	rows, err = e.pool.Query(e.ctx, `SELECT c.relkind::text, format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'S') AND `+u("n.nspname")+` ORDER BY 2`)
	if err != nil {
		e.t.Fatal(err)
	}
	type rel struct{ Kind, Name string }
	rels, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rel])
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rels {
		q := `SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\n' ORDER BY t::text)), '') FROM ` + r.Name + ` t`
		if r.Kind == "S" {
			q = `SELECT last_value || ' ' || is_called FROM ` + r.Name
		}
		var s string
		if err := e.pool.QueryRow(e.ctx, q).Scan(&s); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
		out = append(out, "data "+r.Name+" "+s)
	}
	return out
}

// unchanged fails the test when the database differs from before.
func (e *dbEnv) unchanged(what string, before []string) {
	e.t.Helper()
	after := e.snapshot(true)
	if slices.Equal(before, after) {
		return
	}
	var diff []string
	for _, l := range before {
		if !slices.Contains(after, l) {
			diff = append(diff, "- "+l)
		}
	}
	for _, l := range after {
		if !slices.Contains(before, l) {
			diff = append(diff, "+ "+l)
		}
	}
	e.t.Fatalf("%s changed the database:\n%s", what, strings.Join(diff, "\n"))
}

// setup runs `ferry setup` on this env's database.
func (e *dbEnv) setup() (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = cli.Main(e.ctx, []string{"setup", "--database-url", e.url, "--log-level", "error"}, &out, &errb, cli.Options{})
	return code, out.String(), errb.String()
}

func restoreWriteFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyDump copies a dump, with its sidecar when withMeta, changing the
// dump's bytes with edit.
func copyDump(t *testing.T, from, to string, withMeta bool, edit func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	restoreWriteFile(t, to, edit(data))
	if withMeta {
		meta, err := os.ReadFile(from + ".meta.json")
		if err != nil {
			t.Fatal(err)
		}
		restoreWriteFile(t, to+".meta.json", meta)
	}
}

// A failed upgrade is followed by restores that must fail: a dump cut at
// 60%, one with bytes flipped in the middle (each with and without its
// sidecar), a dump of another database whose sidecar names this one, a
// dump whose ferry tables are at version 99, and a dump whose restore
// fails half-way inside PostgreSQL. Each exits non-zero with a clear
// first line and leaves the database exactly as it was: the same objects
// with the same OIDs (nothing was dropped and recreated), the same rows,
// the tables of the failed upgrade included. Then the good dump restores,
// dropping those tables, back to exactly the backed-up state.
func TestDBRestoreThatFailsChangesNothing(t *testing.T) {
	e := newDBEnv(t)
	dumps := t.TempDir()
	dump := func(name string) string { return filepath.Join(dumps, name) }
	e.write("1_v1.up.sql", `CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
INSERT INTO users (email) SELECT md5(i::text) || '@example.com' FROM generate_series(1, 20000) i;
`)
	e.mustFerry("migrate")
	if code, out, errs := e.setup(); code != 0 {
		t.Fatalf("ferry setup: exit %d\n%s%s", code, out, errs)
	}
	e.mustFerry("backup", dump("good.dump"))
	backedUp := e.snapshot(false)

	// ferry tables from a newer ferry: setup refuses them, backup keeps them.
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO ferry_schema_versions (version, name) VALUES (99, 'from the future')`); err != nil {
		t.Fatal(err)
	}
	code, out, errs := e.setup()
	if code == 0 || strings.Contains(out, "schema is at version") {
		t.Fatalf("ferry setup on ferry schema 99: exit %d\n%s%s", code, out, errs)
	}
	wantContains(t, restoreFirstLine(errs), "newer than this binary", "version 99")
	e.mustFerry("backup", dump("v99.dump"))
	if _, err := e.pool.Exec(e.ctx, `DELETE FROM ferry_schema_versions WHERE version = 99`); err != nil {
		t.Fatal(err)
	}

	// A dump pg_restore reads fine but PostgreSQL cannot load: a CHECK
	// calls a function whose table is not schema-qualified, and
	// pg_restore's empty search_path makes its COPY fail.
	if _, err := e.pool.Exec(e.ctx, `CREATE TABLE allowed (name text);
		INSERT INTO allowed VALUES ('a');
		CREATE FUNCTION is_allowed(x text) RETURNS boolean LANGUAGE sql AS 'SELECT x IN (SELECT name FROM allowed)';
		CREATE TABLE picks (name text CHECK (is_allowed(name)));
		INSERT INTO picks VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	e.mustFerry("backup", dump("unloadable.dump"))
	if _, err := e.pool.Exec(e.ctx, `DROP TABLE picks, allowed; DROP FUNCTION is_allowed`); err != nil {
		t.Fatal(err)
	}

	// A dump of another database, its sidecar edited to name this one.
	other := newDBEnv(t)
	if _, err := other.pool.Exec(other.ctx, `CREATE TABLE users (id bigint)`); err != nil {
		t.Fatal(err)
	}
	other.mustFerry("backup", dump("other.dump"))
	meta, err := os.ReadFile(dump("other.dump.meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(meta, &m); err != nil {
		t.Fatal(err)
	}
	otherName := m["database"].(string)
	var thisName string
	if err := e.pool.QueryRow(e.ctx, `SELECT current_database()`).Scan(&thisName); err != nil {
		t.Fatal(err)
	}
	m["database"] = thisName
	meta, _ = json.Marshal(m)
	restoreWriteFile(t, dump("other.dump.meta.json"), meta)

	// The failed upgrade: a committed migration, then a failing one.
	e.write("2_orders.up.sql", "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users);\nINSERT INTO orders (user_id) VALUES (1), (2);\n")
	e.write("3_broken.up.sql", "UPDATE users SET email = no_such_column;\n")
	e.wantExit(1, "migrate")
	if !e.exists("orders") {
		t.Fatal("the failed upgrade should have left table orders")
	}
	before := e.snapshot(true)

	cut := func(b []byte) []byte { return b[:len(b)*6/10] }
	flip := func(b []byte) []byte {
		b = slices.Clone(b)
		for i := len(b) / 2; i < len(b)/2+16; i++ {
			b[i] ^= 0xff
		}
		return b
	}
	copyDump(t, dump("good.dump"), dump("cut.dump"), true, cut)
	copyDump(t, dump("good.dump"), dump("cut-bare.dump"), false, cut)
	copyDump(t, dump("good.dump"), dump("flipped.dump"), true, flip)
	copyDump(t, dump("good.dump"), dump("flipped-bare.dump"), false, flip)
	for _, c := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"truncated at 60%", []string{"cut.dump"}, 2, []string{"cut.dump is", "truncated", "nothing was changed"}},
		{"truncated at 60%, no sidecar", []string{"cut-bare.dump"}, 2, []string{"cut-bare.dump is truncated or corrupt", "end of file"}},
		{"bytes flipped", []string{"flipped.dump"}, 2, []string{"flipped.dump does not match the SHA-256", "corrupt"}},
		{"bytes flipped, no sidecar", []string{"flipped-bare.dump"}, 2, []string{"flipped-bare.dump is truncated or corrupt", "could not uncompress data"}},
		{"another database, lying sidecar", []string{"other.dump"}, 2,
			[]string{"is a backup of database " + strconv.Quote(otherName), "archive itself names", "--force-other-database"}},
		{"another database, lying sidecar, forced", []string{"other.dump", "--force-other-database"}, 2,
			[]string{"sidecar belongs to another backup"}},
		{"newer ferry schema", []string{"v99.dump"}, 2, []string{"v99.dump's ferry tables are at version 99", "nothing was changed"}},
		{"fails inside PostgreSQL", []string{"unloadable.dump"}, 1, []string{"rolled back", "is unchanged", `relation "allowed" does not exist`}},
	} {
		for _, yes := range []bool{false, true} {
			args := append([]string{"restore", dump(c.args[0])}, c.args[1:]...)
			code := c.code
			if yes {
				args = append(args, "--yes")
			} else if c.code == 1 {
				code = 2 // only the restore itself fails; the plan is fine
			}
			_, errs := e.wantExit(code, args...)
			if !yes && code == 2 && c.code == 1 {
				wantContains(t, errs, "--yes")
			} else if first := restoreFirstLine(errs); !restoreHasAll(first, c.want) {
				t.Errorf("%s (--yes %v): first stderr line %q, want it to contain %q", c.name, yes, first, c.want)
			}
			e.unchanged(fmt.Sprintf("a failed restore (%s, --yes %v)", c.name, yes), before)
		}
	}

	out = e.mustFerry("restore", dump("good.dump"), "--yes")
	wantContains(t, out, "Dropped table public.orders (not in the backup)", "Restored")
	// ferry's record tables keep their rows from before the restore
	// (TestDBRestoreKeepsTheRecord); everything else is the backup's.
	if after := withoutRecords(e.snapshot(false)); !slices.Equal(after, withoutRecords(backedUp)) {
		t.Fatalf("after restore:\n%s\nwant the backed-up state:\n%s", strings.Join(after, "\n"), strings.Join(backedUp, "\n"))
	}
	if code, out, errs := e.setup(); code != 0 {
		t.Fatalf("ferry setup after restore: exit %d\n%s%s", code, out, errs)
	}
}

// restoreFirstLine is the first line of the error ("ferry: ..."), which
// follows the progress lines of a restore that got as far as restoring.
func restoreFirstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "ferry: ") {
			return l
		}
	}
	first, _, _ := strings.Cut(s, "\n")
	return first
}

func restoreHasAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Backing up again to the same path keeps the backup that was there (an
// operator re-running the backup step after a failed upgrade must not
// lose the one taken before it), and a restore from a file without its
// FILE.meta.json says what it could not check.
func TestDBBackupKeepsThePreviousOne(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	e.mustFerry("migrate")
	dump := filepath.Join(t.TempDir(), "b.dump")
	e.mustFerry("backup", dump)
	first, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	out := e.mustFerry("backup", dump)
	kept := dump + ".previous"
	if !strings.Contains(out, "is kept as "+kept+" (one previous copy is kept).") {
		t.Fatalf("second backup (none removed):\n%s", out)
	}
	if again, _ := os.ReadFile(kept); !bytes.Equal(again, first) {
		t.Fatal("the kept backup is not the first one")
	}
	// The kept one still restores with its own sidecar.
	if _, errs := e.wantExit(2, "restore", kept); strings.Contains(errs, "not found") {
		t.Fatalf("the kept backup lost its sidecar:\n%s", errs)
	}
	// One previous copy only: a third backup keeps the second.
	second, _ := os.ReadFile(dump)
	if out := e.mustFerry("backup", dump); !strings.Contains(out, "(one previous copy is kept; the one before it was removed).") {
		t.Fatalf("third backup:\n%s", out)
	}
	if again, _ := os.ReadFile(kept); !bytes.Equal(again, second) {
		t.Fatal("the third backup did not keep the second one")
	}
	if left, _ := filepath.Glob(dump + "*"); len(left) != 4 { // dump, .previous and both sidecars
		t.Fatalf("files after three backups: %v", left)
	}
	bare := filepath.Join(t.TempDir(), "bare.dump")
	if err := os.WriteFile(bare, first, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs := e.wantExit(2, "restore", bare)
	wantContains(t, errs, "warning: "+bare+".meta.json not found: the backup's size and SHA-256 were not checked")
}
