package cli

import (
	"strings"

	"github.com/spf13/cobra"
)

// goFlagArgs rewrites Go's flag-package spelling of long flags, as
// Sourcegraph's migrator and sg print them (`downto -db=frontend
// -target=1528395968`, `up -db=all`), to pflag's (`--db=frontend
// --target=1528395968`): pflag reads "-db" as the shorthands d and b
// ("unknown shorthand flag 'd'"). Only a single-dash word whose name (up
// to "=") is a long flag of the command being run is touched; shorthands
// (-h), negative numbers and everything after "--" stay as they are. It
// runs before cobra parses, next to rewriteRake (GitLab's pasted forms).
//
// It also reads GitLab's per-database mark_migration_complete:ci[V] after
// `ferry db` as `ferry db mark-complete mark_migration_complete:ci[V]`,
// which selects the database: rewriteRake knows one database only.
func goFlagArgs(root *cobra.Command, args []string) []string {
	args = dbRakeArgs(args)
	cmd, _, err := root.Find(args)
	if err != nil {
		return args
	}
	cmd.InheritedFlags() // merges the parents' persistent flags into Flags
	fs := cmd.Flags()
	var out []string
	for i, s := range args {
		if s == "--" {
			return append(out, args[i:]...)
		}
		if len(s) > 2 && s[0] == '-' && s[1] != '-' {
			if name, _, _ := strings.Cut(s[1:], "="); len(name) > 1 && fs.Lookup(name) != nil {
				s = "-" + s
			}
		}
		out = append(out, s)
	}
	return out
}

// dbRakeArgs turns `db mark_migration_complete:NAME[V]` (with or without
// gitlab:db:) into `db mark-complete mark_migration_complete:NAME[V]`.
func dbRakeArgs(args []string) []string {
	for i, s := range args {
		if strings.HasPrefix(s, "-") && s != "--" {
			continue // a global flag; a value of one ends the search below
		}
		if s != "db" || i+1 >= len(args) {
			return args
		}
		rc, ok := parseRake(args[i+1])
		if !ok || rc.Task != "mark_migration_complete" || rc.DB == "" || len(rc.Args) != 1 {
			return args
		}
		out := append([]string{}, args[:i+1]...)
		out = append(out, "mark-complete", args[i+1])
		return append(out, args[i+2:]...)
	}
	return args
}
