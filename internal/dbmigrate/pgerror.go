package dbmigrate

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrymigrate/ferry/internal/pgerr"
)

// SQLError is a statement's PostgreSQL error with what pgconn's Error()
// leaves out: DETAIL ("Key (author_id)=(0) is duplicated."), HINT, the
// context of a function, and where in the file the statement failed.
type SQLError struct {
	Err *pgconn.PgError
	// File is the migration file; Line and Column are 1-based, 0 when
	// PostgreSQL gave no position.
	File         string
	Line, Column int
	// Text is the failing line of the file.
	Text string
	// Statement is the failing statement's number of Statements in a
	// no-transaction file, run one by one (those before it ran); 0 for a
	// file run whole. Without a position, Line is where it starts.
	Statement, Statements int
}

func (e *SQLError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	for _, f := range pgerr.Details(e.Err) {
		fmt.Fprintf(&b, "\n  %s: %s", f[0], f[1])
	}
	stmt := ""
	switch {
	case e.Statement > 1:
		stmt = fmt.Sprintf(" (statement %d of %d; the ones before it ran)", e.Statement, e.Statements)
	case e.Statement == 1:
		stmt = fmt.Sprintf(" (statement 1 of %d)", e.Statements)
	}
	switch {
	case e.Line > 0 && e.Column > 0:
		fmt.Fprintf(&b, "\n  at %s line %d, column %d%s: %s", e.File, e.Line, e.Column, stmt, e.Text)
	case e.Line > 0:
		fmt.Fprintf(&b, "\n  in the statement at %s line %d%s: %s", e.File, e.Line, stmt, e.Text)
	}
	return b.String()
}

func (e *SQLError) Unwrap() error { return e.Err }

// sqlError adds PostgreSQL's details to err, which came from running stmt;
// stmt is a part of file's text script (all of it for a transactional
// file, statement n of a no-transaction one; n is 0 for a whole file).
// Other errors are returned unchanged.
func sqlError(err error, file, script, stmt string, n, of int) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	e := &SQLError{Err: pe, File: file, Statement: n, Statements: of}
	base := max(strings.Index(script, stmt), 0)
	switch {
	case pe.Position > 0:
		e.Line, e.Column, e.Text = position(script, base, int(pe.Position))
	case n > 0:
		// No position (a run-time error such as a division by zero): the
		// statement's first line, where it starts.
		first := skipComments(stmt)
		start := base + len(stmt) - len(first)
		e.Line = strings.Count(script[:start], "\n") + 1
		e.Text, _, _ = strings.Cut(first, "\n")
	}
	return e
}

// skipComments is stmt from its first line that is neither blank nor a
// -- comment (a directive such as -- ferry:no-transaction is one): where
// the statement a reader looks for starts.
func skipComments(stmt string) string {
	rest := strings.TrimLeft(stmt, " \t\r\n")
	for strings.HasPrefix(rest, "--") {
		_, after, ok := strings.Cut(rest, "\n")
		if !ok {
			return strings.TrimLeft(stmt, " \t\r\n") // only comments: keep them
		}
		rest = strings.TrimLeft(after, " \t\r\n")
	}
	return rest
}

// position turns PostgreSQL's 1-based character position in the
// statement starting at byte base of script into the line, column and
// text of that line in the whole script.
func position(script string, base, pos int) (line, col int, text string) {
	off := base
	for i := range script[base:] {
		if pos--; pos == 0 {
			off = base + i
			break
		}
	}
	start := strings.LastIndexByte(script[:off], '\n') + 1
	end := strings.IndexByte(script[off:], '\n')
	if end < 0 {
		end = len(script) - off
	}
	line = strings.Count(script[:off], "\n") + 1
	col = len([]rune(script[start:off])) + 1
	return line, col, strings.TrimSpace(script[start : off+end])
}

// duplicateObject reports whether err says an object the migration
// creates exists already (duplicate table, object, column, schema or
// function): the migration was most likely applied before, by hand or
// before a restore, and `ferry db mark-complete` records it.
func duplicateObject(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "42P07", "42710", "42701", "42P06", "42723":
		return true
	}
	return false
}

// identWord is an SQL identifier as a whole word (quotes aside).
var identWord = regexp.MustCompile(`[a-z_][a-z0-9_$]*`)

// invalidIndexes lists the INVALID indexes (in the search path) whose
// names script mentions; nil when none, or when the catalog cannot be read.
func invalidIndexes(ctx context.Context, db queryer, script string) []string {
	rows, err := db.Query(ctx, `SELECT c.relname, format('%I.%I', n.nspname, c.relname) FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT i.indisvalid AND n.nspname = ANY (current_schemas(false)) ORDER BY 2`)
	if err != nil {
		return nil
	}
	defer rows.Close()
	words := map[string]bool{}
	for _, w := range identWord.FindAllString(strings.ToLower(script), -1) {
		words[w] = true
	}
	var out []string
	for rows.Next() {
		var name, qualified string
		if rows.Scan(&name, &qualified) == nil && words[strings.ToLower(name)] {
			out = append(out, qualified)
		}
	}
	return out
}
