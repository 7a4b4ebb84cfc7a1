package cli

import (
	"slices"
	"testing"
)

// Commas inside single quotes or the JSON arguments' brackets do not split
// a pasted rake task; GitLab's `\,` escapes still work.
func TestSplitRakeArgsQuotedJSON(t *testing.T) {
	want := []string{"CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_big"]]`}
	for _, in := range []string{
		`CopyColumnUsingBackgroundMigrationJob,events,id,'[["id"],["id_big"]]'`,
		`CopyColumnUsingBackgroundMigrationJob,events,id,[["id"],["id_big"]]`,
		`CopyColumnUsingBackgroundMigrationJob,events,id,'[["id"]\,["id_big"]]'`,
	} {
		if got := splitRakeArgs(in); !slices.Equal(got, want) {
			t.Errorf("splitRakeArgs(%s) = %q, want %q", in, got, want)
		}
	}
}
