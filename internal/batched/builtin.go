package batched

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Names of the built-in classes.
const (
	CopyColumnClass       = "CopyColumnUsingBackgroundMigrationJob"
	NullifyOrphansClass   = "NullifyOrphanedReferences"
	copyColumnOperation   = "update_all"
	nullifyOrphanedOpName = "nullify_orphans"
)

// Builtins returns the classes every [NewRegistry] starts with:
//
//   - CopyColumnUsingBackgroundMigrationJob, args [[from...], [to...]]:
//     SET to_i = from_i for each pair (GitLab's integer-to-bigint copies).
//     Pairs whose columns were dropped since queueing are skipped.
//   - NullifyOrphanedReferences, args [column, parent_table, parent_column]:
//     sets column to NULL where no parent row has parent_column = column
//     (cleaning up before adding a foreign key).
func Builtins() []Class {
	return []Class{
		{Name: CopyColumnClass, NumArgs: 2, Plan: planCopyColumn},
		{Name: NullifyOrphansClass, NumArgs: 3, Plan: planNullifyOrphans},
	}
}

// stringList accepts "col" or ["col", ...].
func stringList(raw json.RawMessage) ([]string, error) {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want a column name or a list of column names, got %s", raw)
	}
	return many, nil
}

func planCopyColumn(pc PlanContext) (*Plan, error) {
	from, err := stringList(pc.Args[0])
	if err != nil {
		return nil, fmt.Errorf("%w: copy_from: %v", ErrInvalidArgs, err)
	}
	to, err := stringList(pc.Args[1])
	if err != nil {
		return nil, fmt.Errorf("%w: copy_to: %v", ErrInvalidArgs, err)
	}
	if len(from) == 0 || len(from) != len(to) {
		return nil, fmt.Errorf("%w: copy_from and copy_to need the same, non-zero number of columns (got %d and %d)", ErrInvalidArgs, len(from), len(to))
	}
	var sets []string
	for i := range from {
		for _, c := range []string{from[i], to[i]} {
			if err := ValidateIdent("column", c); err != nil {
				return nil, err
			}
		}
		if !pc.Target.Has(from[i]) || !pc.Target.Has(to[i]) {
			if pc.Queueing {
				missing := from[i]
				if pc.Target.Has(missing) {
					missing = to[i]
				}
				return nil, fmt.Errorf("%w: %s has no column %q", ErrColumnNotFound, pc.Target.Ident(), missing)
			}
			continue // dropped after queueing (GitLab skips such pairs)
		}
		sets = append(sets, Quote(to[i])+" = "+Quote(from[i]))
	}
	if len(sets) == 0 {
		return &Plan{Skip: true, Operation: copyColumnOperation,
			SkipReason: fmt.Sprintf("no column pair to copy exists in %s any more (GitLab skips such pairs): its batches succeed and copy nothing", pc.Target.Ident())}, nil
	}
	return &Plan{Set: strings.Join(sets, ", "), Operation: copyColumnOperation}, nil
}

func planNullifyOrphans(pc PlanContext) (*Plan, error) {
	var col, parentTable, parentCol string
	for i, dst := range []*string{&col, &parentTable, &parentCol} {
		if err := pc.Arg(i, dst); err != nil {
			return nil, err
		}
	}
	if err := ValidateIdent("column", col); err != nil {
		return nil, err
	}
	if !pc.Target.Has(col) {
		if pc.Queueing {
			return nil, fmt.Errorf("%w: %s has no column %q", ErrColumnNotFound, pc.Target.Ident(), col)
		}
		return &Plan{Skip: true, Operation: nullifyOrphanedOpName,
			SkipReason: fmt.Sprintf("%s has no column %q any more: its batches succeed and change nothing", pc.Target.Ident(), col)}, nil
	}
	schema, ptable, err := splitTable(parentTable)
	if err != nil {
		return nil, err
	}
	if err := ValidateIdent("column", parentCol); err != nil {
		return nil, err
	}
	if pc.Resolve != nil {
		if _, err := pc.Resolve(parentTable, parentCol); err != nil {
			return nil, err
		}
	}
	parent := Quote(ptable)
	if schema != "" {
		parent = Quote(schema) + "." + parent
	}
	return &Plan{
		Set:       Quote(col) + " = NULL",
		Where:     fmt.Sprintf("t.%s IS NOT NULL AND NOT EXISTS (SELECT 1 FROM %s p WHERE p.%s = t.%s)", Quote(col), parent, Quote(parentCol), Quote(col)),
		Operation: nullifyOrphanedOpName,
	}, nil
}
