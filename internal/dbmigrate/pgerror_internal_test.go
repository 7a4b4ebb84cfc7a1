package dbmigrate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestSQLErrorKeepsDetailHintAndPosition(t *testing.T) {
	t.Parallel()
	script := "-- ferry:no-transaction\nCREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY t_é ON t (nope);\n"
	stmt := "CREATE INDEX CONCURRENTLY t_é ON t (nope)"
	pe := &pgconn.PgError{Severity: "ERROR", Code: "42703", Message: `column "nope" does not exist`,
		Detail: "some detail", Hint: "some hint", Position: 37} // characters, not bytes: "nope" after the é
	err := sqlError(fmt.Errorf("exec: %w", pe), "db/migrate/2_x.up.sql", script, stmt, 2, 2)
	got := err.Error()
	for _, want := range []string{`column "nope" does not exist (SQLSTATE 42703)`, "\n  DETAIL: some detail", "\n  HINT: some hint",
		"\n  at db/migrate/2_x.up.sql line 3, column 37 (statement 2 of 2; the ones before it ran): " + stmt + ";"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	// No position (a run-time error): where the statement starts.
	div := "-- ferry:no-transaction\nCREATE TABLE t (id int);\nINSERT INTO t\n  VALUES (1/0);\n"
	pe = &pgconn.PgError{Severity: "ERROR", Code: "22012", Message: "division by zero"}
	got = sqlError(pe, "db/migrate/3_d.up.sql", div, "\nINSERT INTO t\n  VALUES (1/0)", 2, 2).Error()
	if want := "\n  in the statement at db/migrate/3_d.up.sql line 3 (statement 2 of 2; the ones before it ran): INSERT INTO t"; !strings.Contains(got, want) {
		t.Errorf("missing %q in\n%s", want, got)
	}
	// The first statement carries the file's directive comment: the
	// location is the statement's own first line, and nothing ran before it.
	idx := "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY fin_v ON fin (v);\n"
	pe42 := &pgconn.PgError{Severity: "ERROR", Code: "42P07", Message: `relation "fin_v" already exists`}
	got = sqlError(pe42, "db/migrate/4_i.up.sql", idx, "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY fin_v ON fin (v)", 1, 1).Error()
	if want := "\n  in the statement at db/migrate/4_i.up.sql line 2 (statement 1 of 1): CREATE INDEX CONCURRENTLY fin_v ON fin (v)"; !strings.Contains(got, want) {
		t.Errorf("missing %q in\n%s", want, got)
	}
	if !duplicateObject(&pgconn.PgError{Code: "42P07"}) || duplicateObject(pe) {
		t.Error("duplicateObject")
	}
}
