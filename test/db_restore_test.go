package test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
