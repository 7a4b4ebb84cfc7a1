package pgcatalog_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/pgcatalog"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestIdentProblems(t *testing.T) {
	cases := []struct {
		name       string
		any, plain bool // accepted by IdentProblem, by PlainIdentProblem
	}{
		{"events", true, true},
		{"id_convert_to_bigint", true, true},
		{"Weird Name", true, false},
		{"users; DROP TABLE x", true, false},
		{`a"b`, true, false},
		{"", false, false},
		{strings.Repeat("x", 64), false, false},
		{strings.Repeat("x", 63), true, true},
		{"nul\x00", false, false},
		{"\xff", false, false},
		{"1abc", true, false},
	}
	for _, c := range cases {
		if got := pgcatalog.IdentProblem(c.name) == ""; got != c.any {
			t.Errorf("IdentProblem(%q) accepted = %v, want %v", c.name, got, c.any)
		}
		if got := pgcatalog.PlainIdentProblem(c.name) == ""; got != c.plain {
			t.Errorf("PlainIdentProblem(%q) accepted = %v, want %v", c.name, got, c.plain)
		}
	}
}

func TestFindTableAndColumns(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA other; CREATE TABLE other.events (id bigint, "Odd Col" text);
		CREATE TABLE events (id integer, v int); CREATE VIEW vw AS SELECT 1 AS x`); err != nil {
		t.Fatal(err)
	}
	tb, err := pgcatalog.FindTable(ctx, pool, "", "events")
	if err != nil || tb.Schema != "public" || !tb.Visible || tb.Quoted() != `"public"."events"` {
		t.Fatalf("FindTable(events) = %+v, %v; want public.events, visible", tb, err)
	}
	other, err := pgcatalog.FindTable(ctx, pool, "other", "events")
	if err != nil || other.Schema != "other" || other.Visible || other.OID == tb.OID {
		t.Fatalf("FindTable(other.events) = %+v, %v; want the other schema's table, not visible", other, err)
	}
	cols, err := pgcatalog.Columns(ctx, pool, other.OID)
	if err != nil || cols["id"] != "bigint" || cols["Odd Col"] != "text" || len(cols) != 2 {
		t.Fatalf("Columns(other.events) = %v, %v", cols, err)
	}
	for _, name := range []string{"vw", "missing", "events; DROP TABLE events"} {
		if _, err := pgcatalog.FindTable(ctx, pool, "", name); !errors.Is(err, pgcatalog.ErrNoTable) {
			t.Errorf("FindTable(%q) = %v, want ErrNoTable", name, err)
		}
	}
}
