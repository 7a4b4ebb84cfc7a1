package cli

import (
	"slices"
	"testing"
)

// Sourcegraph's migrator spelling reaches cobra as pflag's; shorthands,
// values and what follows "--" are left alone.
func TestGoFlagArgs(t *testing.T) {
	a := &App{}
	root := a.rootCmd()
	for _, c := range []struct{ in, want []string }{
		{[]string{"db", "downto", "-db=frontend", "-target=1528395968"}, []string{"db", "downto", "--db=frontend", "--target=1528395968"}},
		{[]string{"db", "up", "-db", "all"}, []string{"db", "up", "--db", "all"}},
		{[]string{"db", "upto", "-db=ci", "-target", "12"}, []string{"db", "upto", "--db=ci", "--target", "12"}},
		{[]string{"db", "status", "-h"}, []string{"db", "status", "-h"}},
		{[]string{"db", "downto", "--", "-db=x"}, []string{"db", "downto", "--", "-db=x"}},
		{[]string{"db", "status", "-nope=1"}, []string{"db", "status", "-nope=1"}},
		{[]string{"db", "mark_migration_complete:ci[12]"}, []string{"db", "mark-complete", "mark_migration_complete:ci[12]"}},
		{[]string{"db", "mark_migration_complete[12]"}, []string{"db", "mark_migration_complete[12]"}},
	} {
		if got := goFlagArgs(root, c.in); !slices.Equal(got, c.want) {
			t.Errorf("goFlagArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
