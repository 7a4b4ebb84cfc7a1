package dbmigrate

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

func TestVersionCompareIsNumeric(t *testing.T) {
	a, _ := ParseVersion("9")
	b, _ := ParseVersion("20151103134857")
	c, _ := ParseVersion("00010")
	if a.Compare(b) >= 0 || b.Compare(a) <= 0 || c != "10" || a.Compare(c) >= 0 {
		t.Fatalf("bad ordering: %s %s %s", a, b, c)
	}
	if _, err := ParseVersion("12a"); !errors.Is(err, ErrBadVersion) {
		t.Fatalf("want ErrBadVersion, got %v", err)
	}
}

func TestLoadOrdersAndParsesDirectives(t *testing.T) {
	fsys := fstest.MapFS{
		"10_b.up.sql":   {Data: []byte("-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\nCREATE INDEX CONCURRENTLY j ON t (y);\n")},
		"10_b.down.sql": {Data: []byte("DROP INDEX IF EXISTS i;")},
		"11_c.up.sql":   {Data: []byte("ALTER TABLE t DROP COLUMN x;")},
		"11_c.down.sql": {Data: []byte("-- ferry:irreversible the column's data is gone\n")},
		"9_a.up.sql":    {Data: []byte("-- ferry:require-bbm CopyColumn events id [[\"id\"], [\"id_big\"]]\n-- ferry:queue-bbm X t id\nSELECT 1;")},
		"README.md":     {Data: []byte("ignored")},
	}
	migs, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if len(migs) != 3 || migs[0].Version != "9" || migs[1].Version != "10" {
		t.Fatalf("order: %+v", migs)
	}
	if !migs[1].Up.NoTransaction || migs[1].DownFile == "" || migs[0].DownFile != "" {
		t.Fatalf("files: %+v", migs[1])
	}
	if migs[2].Down.Irreversible != "the column's data is gone" || migs[1].Down.Irreversible != "" {
		t.Fatalf("irreversible: %q %q", migs[2].Down.Irreversible, migs[1].Down.Irreversible)
	}
	req := migs[0].Up.Require[0]
	if req.Class != "CopyColumn" || req.Table != "events" || string(req.Args) != `[["id"],["id_big"]]` {
		t.Fatalf("require: %+v", req)
	}
	if q := migs[0].Up.Queue[0]; string(q.Args) != "[]" {
		t.Fatalf("queue: %+v", q)
	}
}

func TestLoadRejectsTypos(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"bad name":        {"1_x.sql": {}},
		"two names":       {"1_x.up.sql": {}, "1_y.up.sql": {}},
		"down only":       {"1_x.down.sql": {}},
		"late notx":       {"1_x.up.sql": {Data: []byte("SELECT 1;\n-- ferry:no-transaction\n")}},
		"unknown":         {"1_x.up.sql": {Data: []byte("-- ferry:no-transactions\n")}},
		"bad json":        {"1_x.up.sql": {Data: []byte("-- ferry:require-bbm A b c {\n")}},
		"queue in down":   {"1_x.up.sql": {}, "1_x.down.sql": {Data: []byte("-- ferry:queue-bbm A b c []\n")}},
		"irreversible up": {"1_x.up.sql": {Data: []byte("-- ferry:irreversible\n")}},
		"zero version":    {"0_x.up.sql": {}},
		"duplicate up":    {"1_x.up.sql": {}, "01_x.up.sql": {}},
		"duplicate down":  {"1_x.up.sql": {}, "1_x.down.sql": {}, "001_x.down.sql": {}},
		"missing fields":  {"1_x.up.sql": {Data: []byte("-- ferry:require-bbm A b\n")}},
	} {
		if _, err := Load(fsys); !errors.Is(err, ErrBadSource) {
			t.Errorf("%s: want ErrBadSource, got %v", name, err)
		}
	}
}

func TestSplitStatements(t *testing.T) {
	sql := `-- leading comment; with semicolon
CREATE INDEX CONCURRENTLY a ON t (x); /* block; /* nested; */ */
INSERT INTO t VALUES ('it''s; fine', E'back\'slash;', "weird;col");
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
DO $$ BEGIN PERFORM 1; END $$;
-- trailing comment only
`
	got := splitStatements(sql)
	want := []string{
		"-- leading comment; with semicolon\nCREATE INDEX CONCURRENTLY a ON t (x)",
		"/* block; /* nested; */ */\nINSERT INTO t VALUES ('it''s; fine', E'back\\'slash;', \"weird;col\")",
		"CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
		"DO $$ BEGIN PERFORM 1; END $$",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestGateErrorText(t *testing.T) {
	e := &GateError{BBM: BBM{Class: "CopyColumnUsingBackgroundMigrationJob", Table: "events", Column: "id",
		Args: []byte(`[["id"],["id_convert_to_bigint"]]`)}, Status: "active", RequiredBy: "1_x"}
	want := "Expected batched background migration for the given configuration to be marked as 'finished', but it is 'active':\t" +
		`{"job_class_name":"CopyColumnUsingBackgroundMigrationJob","table_name":"events","column_name":"id","job_arguments":[["id"],["id_convert_to_bigint"]]}` +
		"\n\nFinalize it manually by running the following command in a `bash` or `sh` shell:\n\n\t" +
		`ferry bbm finalize CopyColumnUsingBackgroundMigrationJob events id '[["id"],["id_convert_to_bigint"]]'`
	if got := e.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Fatalf("got\n%s\nwant prefix\n%s", got, want)
	}
	// On ci, after --finalize failed: every command names ci, and the
	// inline way is offered as "again once fixed", not as something new.
	e.Database, e.FinalizeErr = "ci", errors.New("it is failed; see `ferry bbm show ci_5`")
	got := e.Error()
	for _, w := range []string{"--finalize could not finish it: it is failed; see `ferry bbm show ci_5`",
		"\tferry bbm finalize --db ci CopyColumnUsingBackgroundMigrationJob", "once what failed its batches is fixed, or run `ferry db migrate --finalize --db ci` again then. (Required by migration 1_x.)"} {
		if !strings.Contains(got, w) {
			t.Errorf("no %q in\n%s", w, got)
		}
	}
	if strings.Contains(got, "let the migration finalize it inline") {
		t.Errorf("offers the inline finalize that just failed:\n%s", got)
	}
}

// A directory with no migration files but subdirectories is not "no
// migrations": Sourcegraph's layout, or a release root with one directory
// per database, would otherwise read as up to date.
func TestLoadRefusesOnlyDirectories(t *testing.T) {
	for _, tc := range []struct {
		fsys fstest.MapFS
		want string
	}{
		{fstest.MapFS{"1000_f1000/up.sql": {Data: []byte("SELECT 1;")}}, "Sourcegraph's layout (1000_f1000/up.sql)"},
		{fstest.MapFS{"frontend/1_a.up.sql": {Data: []byte("SELECT 1;")}, "codeintel/1_a.up.sql": {Data: []byte("SELECT 1;")}}, "only directories (codeintel, frontend)"},
	} {
		if _, err := Load(tc.fsys); !errors.Is(err, ErrBadSource) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want ErrBadSource saying %q", err, tc.want)
		}
	}
	// Files and a subdirectory beside them, or nothing at all: fine.
	for _, fsys := range []fstest.MapFS{{"1_a.up.sql": {Data: []byte("SELECT 1;")}, "archive/x.txt": {}}, {}} {
		if _, err := Load(fsys); err != nil {
			t.Errorf("%v: %v", fsys, err)
		}
	}
}
