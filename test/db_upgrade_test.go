package test

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The failed-upgrade story: v1 is live and backed up; the upgrade commits a
// new table, then a later migration fails; restore brings back exactly v1
// (dropping the new table), and the corrected upgrade then succeeds with no
// "relation already exists".
func TestDBFailedUpgradeRestoreAndRetry(t *testing.T) {
	e := newDBEnv(t)
	e.write("20240101000000_create_users.up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n")
	e.write("20240101000000_create_users.down.sql", "DROP TABLE users;\n")
	e.mustFerry("migrate")
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com')`); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "v1.dump")
	out := e.mustFerry("backup", dump)
	wantContains(t, out, "Backed up database", dump+".meta.json")

	// The upgrade: a new table and sequence commit, then a migration fails.
	e.write("20240201000000_create_orders.up.sql", "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users);\nCREATE VIEW order_counts AS SELECT user_id, count(*) FROM orders GROUP BY 1;\n")
	e.write("20240201000000_create_orders.down.sql", "DROP VIEW order_counts; DROP TABLE orders;\n")
	e.write("20240202000000_backfill.up.sql", "ALTER TABLE users ADD COLUMN name text;\nUPDATE users SET name = no_such_column;\n")
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, "20240202000000_backfill (up) failed with", "no_such_column", "rolled back")
	if !e.exists("orders") {
		t.Fatal("orders should have been committed by the first upgrade migration")
	}

	// Without --yes: exit 2, printing what would be dropped, nothing changes.
	out, errs = e.wantExit(2, "restore", dump)
	wantContains(t, out, `Would drop view public.order_counts`, `Would drop table public.orders`, `Would drop sequence public.orders_id_seq`)
	wantContains(t, errs, "--yes")
	if !e.exists("orders") {
		t.Fatal("restore without --yes dropped something")
	}

	// Another database is refused.
	other := newDBEnv(t)
	_, errs = other.wantExit(2, "restore", dump, "--yes")
	wantContains(t, errs, "is a backup of database", "--force-other-database")

	out = e.mustFerry("restore", dump, "--yes")
	wantContains(t, out, "Dropped table public.orders", "Restored")
	if e.exists("orders") || e.exists("order_counts") || e.exists("orders_id_seq") {
		t.Fatal("objects created by the failed upgrade survived the restore")
	}
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM users`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("users after restore: %d, %v", n, err)
	}
	if got := e.applied(); !slices.Equal(got, []string{"20240101000000"}) {
		t.Fatalf("schema_migrations after restore: %v", got)
	}

	// The fixed upgrade goes through from the top.
	e.write("20240202000000_backfill.up.sql", "ALTER TABLE users ADD COLUMN name text;\nUPDATE users SET name = email;\n")
	code, out, errs := e.ferry("migrate")
	if code != 0 || strings.Contains(errs, "already exists") {
		t.Fatalf("re-upgrade: exit %d\n%s\n%s", code, out, errs)
	}
	wantContains(t, out, "20240201000000 create_orders: migrated", "20240202000000 backfill: migrated")
	if got := e.applied(); len(got) != 3 {
		t.Fatalf("applied: %v", got)
	}
}

func TestDBDowntoAndDryRun(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	e.write("1_a.down.sql", "DROP TABLE a;")
	e.write("2_b.up.sql", "CREATE TABLE b (id int);")
	e.write("2_b.down.sql", "DROP TABLE b;")
	e.write("10_c.up.sql", "CREATE TABLE c (id int);")
	e.write("10_c.down.sql", "DROP TABLE c;")

	out := e.mustFerry("migrate", "--to", "2", "--dry-run")
	wantContains(t, out, "1_a.up.sql", "CREATE TABLE b", "would run 2 migration(s) up")
	if strings.Contains(out, "CREATE TABLE c") || e.exists("a") {
		t.Fatalf("dry run went too far or changed something:\n%s", out)
	}
	e.mustFerry("migrate")
	if got := e.applied(); !slices.Equal(got, []string{"1", "2", "10"}) {
		t.Fatalf("applied %v (numeric order expected)", got)
	}

	out = e.mustFerry("downto", "1", "--dry-run")
	if i, j := strings.Index(out, "DROP TABLE c"), strings.Index(out, "DROP TABLE b"); i < 0 || j < 0 || i > j {
		t.Fatalf("downto plan must revert 10 then 2:\n%s", out)
	}
	if !e.exists("c") {
		t.Fatal("dry run changed something")
	}
	out = e.mustFerry("downto", "1")
	wantContains(t, out, "Reverted 2 migration(s); now at 1")
	if !e.exists("a") || e.exists("b") || e.exists("c") {
		t.Fatal("downto 1 must keep 1 and revert 2 and 10")
	}
	if got := e.applied(); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("applied %v", got)
	}

	// A missing down file is named and nothing runs.
	e.mustFerry("migrate")
	e.write("11_d.up.sql", "CREATE TABLE d (id int);")
	e.mustFerry("migrate")
	_, errs := e.wantExit(1, "downto", "1")
	wantContains(t, errs, filepath.Join(e.dir, "11_d.down.sql")+" does not exist")
	if !e.exists("c") {
		t.Fatal("downto ran although a down file is missing")
	}
	_, errs = e.wantExit(2, "downto", "7")
	wantContains(t, errs, "7 is neither a migration")

	out = e.mustFerry("status", "--json")
	wantContains(t, out, `"state": "applied"`, `"current": "11"`)
}

func TestDBMarkComplete(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	e.write("2_broken.up.sql", "SELECT * FROM table_that_does_not_exist;")
	e.write("20151103134857_also_broken.up.sql", "SELECT * FROM table_that_does_not_exist;")
	e.write("20151103134858_b.up.sql", "CREATE TABLE b (id int);")

	out := e.mustFerry("mark-complete", "2")
	wantContains(t, out, "Successfully marked '2' as complete on database")
	appliedAt := func() string {
		t.Helper()
		var st struct {
			Migrations []struct {
				Version   string     `json:"version"`
				AppliedAt *time.Time `json:"applied_at"`
			} `json:"migrations"`
		}
		_, js, _ := e.ferry("status", "--json")
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, js)
		}
		for _, m := range st.Migrations {
			if m.Version == "2" && m.AppliedAt != nil {
				return m.AppliedAt.Format(time.RFC3339Nano)
			}
		}
		t.Fatalf("no applied time for 2:\n%s", js)
		return ""
	}
	marked := appliedAt()
	out = e.mustFerry("mark-complete", "2")
	wantContains(t, out, "Migration version '2' is already marked complete on database")
	if again := appliedAt(); again != marked {
		t.Fatalf("a mark-complete that found 2 recorded moved its applied time from %s to %s", marked, again)
	}
	_, errs := e.wantExit(2, "mark-complete", "0")
	wantContains(t, errs, "non-zero integer")

	// The documented SQL marks one complete too.
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO schema_migrations (version) VALUES ('20151103134857');`); err != nil {
		t.Fatal(err)
	}
	out = e.mustFerry("migrate")
	wantContains(t, out, "1 a: migrated", "20151103134858 b: migrated", "Applied 2 migration(s)")
	if strings.Contains(out, "broken") {
		t.Fatalf("a marked migration ran:\n%s", out)
	}
	out = e.mustFerry("status")
	wantContains(t, out, "Current version: 20151103134858; 0 pending.")
}
