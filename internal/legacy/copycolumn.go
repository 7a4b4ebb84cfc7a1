package legacy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgcatalog"
)

// CopyColumnArgs are GitLab's CopyColumn arguments:
// [table, from_column, to_column, start_id, end_id].
type CopyColumnArgs struct {
	Table      string
	FromColumn string
	ToColumn   string
	StartID    int64
	EndID      int64
}

// Kind is the migration class name.
func (CopyColumnArgs) Kind() string { return "CopyColumn" }

// CopyColumn copies from_column into to_column for the rows whose id is in
// [start_id, end_id], like GitLab's CopyColumn. Identifiers are checked
// against pg_catalog and quoted, so an argument can never inject SQL.
type CopyColumn struct {
	// SubBatchSize > 0 splits the id range into statements of that many
	// ids, each its own transaction, so a huge range with dense ids does
	// not hold row locks for long. 0 copies the range in one statement.
	SubBatchSize int64
}

// AddCopyColumn registers the built-in CopyColumn.
func AddCopyColumn(r *Registry, c CopyColumn) { Add[CopyColumnArgs](r, c) }

// Validate implements Validator: the range is ordered, the identifiers
// are plain and the table and columns exist.
func (c CopyColumn) Validate(ctx context.Context, job *Job[CopyColumnArgs]) error {
	_, err := c.table(ctx, job)
	return err
}

func (CopyColumn) table(ctx context.Context, job *Job[CopyColumnArgs]) (*Table, error) {
	a := job.Args
	// What needs no database is checked first, so that `ferry enqueue`
	// (which has none) refuses these too.
	if a.StartID > a.EndID {
		return nil, &ArgsError{Class: job.Class, Err: fmt.Errorf("start_id %d is greater than end_id %d", a.StartID, a.EndID)}
	}
	if err := validateNames(a.Table, a.FromColumn, a.ToColumn); err != nil {
		return nil, err
	}
	if job.DB == nil {
		return nil, ErrNoDatabase
	}
	if job.Tables == nil {
		job.Tables = NewTables(0)
	}
	return job.Tables.Resolve(ctx, job.DB, a.Table, "id", a.FromColumn, a.ToColumn)
}

// Perform implements Migration.
func (c CopyColumn) Perform(ctx context.Context, job *Job[CopyColumnArgs]) error {
	a := job.Args
	tbl, err := c.table(ctx, job)
	if err != nil {
		return err
	}
	from, to := pgx.Identifier{a.FromColumn}.Sanitize(), pgx.Identifier{a.ToColumn}.Sanitize()
	sql := fmt.Sprintf(`UPDATE %s SET %s = %s WHERE id BETWEEN $1 AND $2`, tbl.Quoted, to, from)
	var rows int64
	for lo := a.StartID; ; {
		hi := a.EndID
		if c.SubBatchSize > 0 && a.EndID-lo >= c.SubBatchSize {
			hi = lo + c.SubBatchSize - 1
		}
		tag, err := job.DB.Exec(ctx, sql, lo, hi)
		if err != nil {
			return fmt.Errorf("CopyColumn %s.%s -> %s ids %d..%d: %w", a.Table, a.FromColumn, a.ToColumn, lo, hi, err)
		}
		rows += tag.RowsAffected()
		if hi >= a.EndID {
			break
		}
		lo = hi + 1
	}
	job.Logger.Debug("copied column", zap.String("table", a.Table), zap.String("from", a.FromColumn),
		zap.String("to", a.ToColumn), zap.Int64("start_id", a.StartID), zap.Int64("end_id", a.EndID), zap.Int64("rows", rows))
	return nil
}

// maxBatchIDs bounds the ids one combined CopyColumn statement covers, so
// combining jobs never holds row locks much longer than one large job.
const maxBatchIDs = 50_000

// PerformBatch implements BatchMigration: jobs on the same table and
// columns are copied by one statement over all their id ranges, which is
// what makes `bm steal` of many small jobs fast (one statement and commit
// per run of jobs instead of one per job).
func (c CopyColumn) PerformBatch(ctx context.Context, db DB, jobs []*Job[CopyColumnArgs]) error {
	first := jobs[0].Args
	los, his := make([]int64, len(jobs)), make([]int64, len(jobs))
	var ids int64
	for i, j := range jobs {
		a := j.Args
		if a.Table != first.Table || a.FromColumn != first.FromColumn || a.ToColumn != first.ToColumn {
			return ErrNotBatchable
		}
		span := a.EndID - a.StartID + 1
		if span <= 0 || span > maxBatchIDs || (c.SubBatchSize > 0 && span > c.SubBatchSize) {
			return ErrNotBatchable
		}
		if ids += span; ids > maxBatchIDs {
			return ErrNotBatchable
		}
		los[i], his[i] = a.StartID, a.EndID
	}
	tbl, err := c.table(ctx, jobs[0])
	if err != nil {
		return err
	}
	from, to := pgx.Identifier{first.FromColumn}.Sanitize(), pgx.Identifier{first.ToColumn}.Sanitize()
	// Ranges may overlap; UPDATE ... FROM updates a row once however many
	// ranges hold it.
	sql := fmt.Sprintf(`UPDATE %s AS t SET %s = t.%s FROM unnest($1::bigint[], $2::bigint[]) AS r(lo, hi)
		WHERE t.id BETWEEN r.lo AND r.hi`, tbl.Quoted, to, from)
	tag, err := db.Exec(ctx, sql, los, his)
	if err != nil {
		return fmt.Errorf("CopyColumn %s.%s -> %s, %d jobs together: %w", first.Table, first.FromColumn, first.ToColumn, len(jobs), err)
	}
	jobs[0].Logger.Debug("copied column", zap.String("table", first.Table), zap.String("from", first.FromColumn),
		zap.String("to", first.ToColumn), zap.Int("jobs", len(jobs)), zap.Int64("rows", tag.RowsAffected()))
	return nil
}

// ValidateIdentifier checks a table or column name from job arguments
// (pgcatalog.PlainIdentProblem: the shape Rails and GitLab migrations use,
// which rules out quotes, semicolons, spaces and comments before any
// lookup).
func ValidateIdentifier(what, name string) error {
	if p := pgcatalog.PlainIdentProblem(name); p != "" {
		return &IdentifierError{What: what, Name: name, Reason: p}
	}
	return nil
}

// Table is a table resolved through pg_catalog.
type Table struct {
	Name   string // as given
	OID    uint32
	Quoted string // schema-qualified, quoted with pgx.Identifier
}

// validateNames checks a table name ("table" or "schema.table") and column
// names without looking them up.
func validateNames(table string, cols ...string) error {
	if _, err := splitTable(table); err != nil {
		return err
	}
	for _, c := range cols {
		if err := ValidateIdentifier("column", c); err != nil {
			return err
		}
	}
	return nil
}

// splitTable validates name ("table" or "schema.table") and returns its
// schema ("" when not given) and relation.
func splitTable(name string) ([2]string, error) {
	schema, rel, ok := pgcatalog.SplitTable(name)
	if !ok {
		return [2]string{}, &IdentifierError{What: "table", Name: name, Reason: "has more than one '.'"}
	}
	parts := []string{rel}
	if strings.Contains(name, ".") {
		parts = append(parts, schema)
	}
	for _, p := range parts {
		if err := ValidateIdentifier("table", p); err != nil {
			e := err.(*IdentifierError)
			e.Name = name
			return [2]string{}, e
		}
	}
	return [2]string{schema, rel}, nil
}

// ResolveTable validates name ("table" or "schema.table") and finds it on
// the search path.
func ResolveTable(ctx context.Context, db DB, name string) (*Table, error) {
	sr, err := splitTable(name)
	if err != nil {
		return nil, err
	}
	schema, rel := sr[0], sr[1]
	found, err := pgcatalog.FindTable(ctx, db, schema, rel)
	if errors.Is(err, pgcatalog.ErrNoTable) {
		return nil, &IdentifierError{What: "table", Name: name, Reason: "does not exist (or is not a table) on the search path", Missing: true}
	}
	if err != nil {
		return nil, err
	}
	return &Table{Name: name, OID: found.OID, Quoted: found.Quoted()}, nil
}

// RequireColumns checks that each column is a valid name and exists.
func (t *Table) RequireColumns(ctx context.Context, db DB, cols ...string) error {
	for _, c := range cols {
		if err := ValidateIdentifier("column", c); err != nil {
			return err
		}
	}
	found, err := pgcatalog.Columns(ctx, db, t.OID)
	if err != nil {
		return fmt.Errorf("look up columns of %s: %w", t.Name, err)
	}
	for _, c := range cols {
		if _, ok := found[c]; !ok {
			return &IdentifierError{What: "column", Name: c, Reason: fmt.Sprintf("does not exist in table %s", t.Name), Missing: true}
		}
	}
	return nil
}
