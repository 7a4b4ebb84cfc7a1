// Package pgcatalog is the one place ferry checks the table and column names
// operators and jobs give it, and finds them in pg_catalog. Names are
// compared with the catalog, never parsed as SQL, and quoted with
// pgx.Identifier when used, so hostile input matches nothing.
package pgcatalog

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// MaxIdentLen is PostgreSQL's NAMEDATALEN-1: a longer name would be
// silently truncated, i.e. could name a different object.
const MaxIdentLen = 63

// ErrNoTable: no table of that name on the search path (or in the schema).
var ErrNoTable = errors.New("table not found")

// IdentProblem says what is wrong with name as an identifier ("" when
// nothing): empty, longer than MaxIdentLen, not valid UTF-8 or containing
// NUL (which PostgreSQL refuses with an encoding error).
func IdentProblem(name string) string {
	switch {
	case name == "":
		return "is empty"
	case len(name) > MaxIdentLen:
		return fmt.Sprintf("is %d bytes long; PostgreSQL identifiers are at most %d bytes", len(name), MaxIdentLen)
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return "contains invalid characters"
	}
	return ""
}

var plainIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)

// PlainIdentProblem is IdentProblem plus the shape Rails and GitLab
// migrations use: letters, digits, _ and $, not starting with a digit. Job
// arguments (which nobody typed by hand) are held to it.
func PlainIdentProblem(name string) string {
	if p := IdentProblem(name); p != "" {
		return p
	}
	if !plainIdent.MatchString(name) {
		return "is not a plain identifier (only letters, digits, _ and $, not starting with a digit, are accepted)"
	}
	return ""
}

// SplitTable splits "table" or "schema.table"; more dots are not a table
// name (ok false).
func SplitTable(name string) (schema, table string, ok bool) {
	parts := strings.Split(name, ".")
	switch len(parts) {
	case 1:
		return "", parts[0], true
	case 2:
		return parts[0], parts[1], true
	}
	return "", "", false
}

// Queryer is a pool, a connection or a transaction.
type Queryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Table is a table found in pg_catalog.
type Table struct {
	OID    uint32
	Schema string
	Name   string
	// Visible: the unqualified name reaches this table (pg_table_is_visible).
	Visible bool
}

// Quoted is the schema-qualified, quoted name for SQL.
func (t Table) Quoted() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// tableSearch is the FROM ... LIMIT 1 that finds an ordinary or
// partitioned table by exact name, given as SQL text expressions: in
// schema unless that is the empty string, else first on the search path. It reads only
// pg_catalog, so no name (or schema without USAGE) makes it fail.
func tableSearch(schema, table string) string {
	return `FROM pg_catalog.pg_class cls JOIN pg_catalog.pg_namespace nsp ON nsp.oid = cls.relnamespace
		WHERE cls.relname = ` + table + ` AND cls.relkind IN ('r', 'p')
		  AND ( (` + schema + ` <> '' AND nsp.nspname = ` + schema + `)
		     OR (` + schema + ` = '' AND nsp.nspname = ANY (pg_catalog.current_schemas(false))) )
		ORDER BY array_position(pg_catalog.current_schemas(false), nsp.nspname::text) NULLS LAST
		LIMIT 1`
}

// TableOIDSQL is a scalar SQL expression: the oid of the table FindTable
// finds for the schema and table SQL text expressions, NULL when none.
func TableOIDSQL(schema, table string) string {
	return `(SELECT cls.oid ` + tableSearch(schema, table) + `)`
}

// FindTable finds an ordinary or partitioned table by exact name: in schema
// when it is not "", else first on the search path. ErrNoTable when none.
func FindTable(ctx context.Context, q Queryer, schema, table string) (Table, error) {
	t := Table{}
	err := q.QueryRow(ctx, `SELECT cls.oid, nsp.nspname, cls.relname, pg_catalog.pg_table_is_visible(cls.oid) `+
		tableSearch("$2::text", "$1::text"), table, schema).Scan(&t.OID, &t.Schema, &t.Name, &t.Visible)
	if errors.Is(err, pgx.ErrNoRows) {
		return Table{}, ErrNoTable
	}
	if err != nil {
		return Table{}, fmt.Errorf("look up table %q: %w", table, err)
	}
	return t, nil
}

// Columns returns the live columns of table oid with their SQL types.
func Columns(ctx context.Context, q Queryer, oid uint32) (map[string]string, error) {
	rows, err := q.Query(ctx, `
		SELECT attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, oid)
	if err != nil {
		return nil, err
	}
	cols := map[string]string{}
	for rows.Next() {
		var n, typ string
		if err := rows.Scan(&n, &typ); err != nil {
			return nil, err
		}
		cols[n] = typ
	}
	return cols, rows.Err()
}
