package batched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/pgcatalog"
)

// Target is a table resolved in pg_catalog, with its columns.
type Target struct {
	Schema string
	Table  string
	Column string // the batching column
	OID    uint32
	// Visible: the unqualified name finds this table (search_path).
	Visible bool
	// Columns maps every live column to its type (format_type).
	Columns map[string]string
}

// Ident is the quoted, schema-qualified table name.
func (t *Target) Ident() string { return pgx.Identifier{t.Schema, t.Table}.Sanitize() }

// spellings are the names a configuration may have recorded for this
// table: as given, schema-qualified, and unqualified when the search path
// finds it so ("public.events" and "events" are one table).
func (t *Target) spellings(given string) []string {
	out := []string{given, t.Schema + "." + t.Table}
	if t.Visible {
		out = append(out, t.Table)
	}
	return out
}

// Has reports whether the table has column c.
func (t *Target) Has(c string) bool { _, ok := t.Columns[c]; return ok }

// ValidateIdent checks a single identifier (pgcatalog.IdentProblem).
func ValidateIdent(kind, s string) error {
	switch p := pgcatalog.IdentProblem(s); {
	case p == "":
		return nil
	case s == "":
		return fmt.Errorf("%w: %s %s", ErrInvalidIdent, kind, p)
	case len(s) > pgcatalog.MaxIdentLen:
		return fmt.Errorf("%w: %s %.70q is longer than %d bytes", ErrInvalidIdent, kind, s, pgcatalog.MaxIdentLen)
	default:
		return fmt.Errorf("%w: %s %q %s", ErrInvalidIdent, kind, s, p)
	}
}

// CheckConfig checks a migration's configuration as given by an operator
// (class, table, column, JSON arguments) before any SQL: identifiers as
// [ValidateIdent] (the table optionally schema-qualified) and the class
// and arguments as valid UTF-8 without NUL, which PostgreSQL refuses
// with a raw encoding error. Errors wrap ErrInvalidIdent or ErrInvalidArgs.
func CheckConfig(class, table, column string, args []byte) error {
	if class == "" || !utf8.ValidString(class) || strings.ContainsRune(class, 0) {
		return fmt.Errorf("%w: class %q is empty or contains invalid characters", ErrInvalidIdent, class)
	}
	if _, _, err := splitTable(table); err != nil {
		return err
	}
	if err := ValidateIdent("column", column); err != nil {
		return err
	}
	if !utf8.Valid(args) || hasNUL(args) {
		return fmt.Errorf("%w: job arguments must be valid UTF-8 without \\u0000, got %.60q", ErrInvalidArgs, args)
	}
	return nil
}

// hasNUL reports whether JSON text holds a string with U+0000, which
// jsonb cannot store. Invalid JSON is left to the argument parser.
func hasNUL(raw []byte) bool {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	var walk func(any) bool
	walk = func(v any) bool {
		switch x := v.(type) {
		case string:
			return strings.ContainsRune(x, 0)
		case []any:
			return slices.ContainsFunc(x, walk)
		case map[string]any:
			for k, e := range x {
				if strings.ContainsRune(k, 0) || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(v)
}

// splitTable splits "schema.table" (one dot at most; names with dots must
// be given unqualified... and then cannot be resolved, by design).
func splitTable(name string) (schema, table string, err error) {
	schema, table, ok := pgcatalog.SplitTable(name)
	if !ok {
		return "", "", fmt.Errorf("%w: table %q has more than one dot", ErrInvalidIdent, name)
	}
	if strings.Contains(name, ".") { // ".events" names no schema: refused
		if err := ValidateIdent("schema", schema); err != nil {
			return "", "", err
		}
	}
	if err := ValidateIdent("table", table); err != nil {
		return "", "", err
	}
	return schema, table, nil
}

// Queryer is a pool, a connection or a transaction.
type Queryer = pgcatalog.Queryer

// ResolveTarget finds table (optionally schema-qualified) and column by
// exact name in pg_catalog, following search_path for unqualified names.
func ResolveTarget(ctx context.Context, q Queryer, table, column string) (*Target, error) {
	schema, tbl, err := splitTable(table)
	if err != nil {
		return nil, err
	}
	if err := ValidateIdent("column", column); err != nil {
		return nil, err
	}
	found, err := pgcatalog.FindTable(ctx, q, schema, tbl)
	if errors.Is(err, pgcatalog.ErrNoTable) {
		return nil, fmt.Errorf("%w: %q does not exist", ErrTableNotFound, table)
	}
	if err != nil {
		return nil, fmt.Errorf("bbm: %w", err)
	}
	t := &Target{OID: found.OID, Schema: found.Schema, Table: found.Name, Visible: found.Visible, Column: column}
	if t.Columns, err = pgcatalog.Columns(ctx, q, t.OID); err != nil {
		return nil, fmt.Errorf("bbm: read columns of %q: %w", table, err)
	}
	if _, ok := t.Columns[column]; !ok {
		return nil, fmt.Errorf("%w: %q has no column %q", ErrColumnNotFound, table, column)
	}
	return t, nil
}

// checkBatchingColumn requires an integer batching column (keyset bounds
// are bigint).
func (t *Target) checkBatchingColumn() error {
	switch typ := t.Columns[t.Column]; typ {
	case "smallint", "integer", "bigint":
		return nil
	default:
		return fmt.Errorf("%w: batching column %q of %s is %s; it must be an integer", ErrInvalidOption, t.Column, t.Ident(), typ)
	}
}
