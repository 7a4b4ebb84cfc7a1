package test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/dbmigrate"
)

// status answers "no" (exit 1) while a migration is pending or the
// database is dirty; a dirty database is the first thing it says, with the
// version and both ways out; --json has "dirty": true.
func TestDBStatusShowsDirtyFirst(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_t.up.sql", "CREATE TABLE t (id int, x int);")
	e.write("2_index.up.sql", "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);\nCREATE INDEX CONCURRENTLY t_y ON t (nope);\n")
	e.write("2_index.down.sql", "-- ferry:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS t_y;\nDROP INDEX CONCURRENTLY IF EXISTS t_x;\n")

	clean := e.notReady("--json")
	wantContains(t, clean, `"dirty": false`)
	if strings.Contains(clean, "dirty_migration") {
		t.Fatalf("clean status has dirty details:\n%s", clean)
	}

	e.wantExit(1, "migrate")
	out := e.notReady()
	first, rest, _ := strings.Cut(out, "\n")
	if !strings.HasPrefix(first, "DIRTY: migration 2_index (up) failed with: ") {
		t.Fatalf("first line of status is not the dirty state:\n%s", out)
	}
	wantContains(t, first, `"nope"`, "`ferry db repair`", "`ferry db mark-complete 2`", "`ferry db downto 1`", "2_index.down.sql")
	wantContains(t, rest, "dirty", "Current version: 1")

	var st dbmigrate.Status
	raw := e.notReady("--json")
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatal(err)
	}
	d := st.DirtyMigration
	if !st.Dirty || d == nil || d.Version != "2" || d.Name != "index" || d.Downto != "1" || len(d.WaysOut) != 2 ||
		!strings.Contains(d.Message, "database is dirty") {
		t.Fatalf("status --json:\n%s", raw)
	}
	wantContains(t, raw, `"dirty": true`, `"ways_out": [`)

	// Without a down file the way out says so.
	e.remove("2_index.down.sql")
	first, _, _ = strings.Cut(e.notReady(), "\n")
	wantContains(t, first, "that file does not exist yet")

	e.write("2_index.down.sql", "-- ferry:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS t_y;\nDROP INDEX CONCURRENTLY IF EXISTS t_x;\n")
	e.mustFerry("downto", "1")
	out = e.notReady()
	if strings.Contains(out, "DIRTY") {
		t.Fatalf("still dirty after downto:\n%s", out)
	}
}
