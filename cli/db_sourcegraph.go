package cli

import (
	"github.com/spf13/cobra"
)

// Sourcegraph's migrator commands that ferry spells otherwise. add-log,
// the dirty-database runbook's step, works as written; the others answer
// with what ferry does instead (cobra alone said "unknown shorthand flag"
// about their Go-style flags, never that the command itself is unknown).

func dbAddLogCmd(a *App, f *dbFlags) *cobra.Command {
	var version string
	var up bool
	cmd := &cobra.Command{
		Use:   "add-log -db=NAME -version=VERSION",
		Short: "Sourcegraph's migrator add-log: record VERSION as applied (= mark-complete VERSION --db NAME)",
		Long: `Sourcegraph's dirty-database runbook, after the migration was finished by
hand: "migrator add-log -db=frontend -version=1528395834". It records VERSION
as applied without running it and clears a dirty mark on it, as
mark-complete does. With several databases -db is required.

-up=false (record it as not applied) is refused: ferry reverts a migration
only by running its down file (downto); after undoing one by hand,
"ferry db repair" clears the dirty mark and leaves it pending.`,
		Example: `  ferry db add-log -db=frontend -version=1528395834`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case !up:
				return Usagef("add-log -up=false would record %s as not applied; ferry reverts a migration only by running its down file "+
					"(`ferry db downto VERSION`, the version before it), and after you undid one by hand, `ferry db repair` clears the "+
					"dirty mark and leaves it pending", version)
			case version == "":
				return Usagef("add-log needs -version=VERSION, the migration you completed by hand (`ferry db status` names the dirty one)")
			case f.db == "" && len(a.Cfg.DatabaseNames()) > 1:
				return a.pleaseSpecify(cmd)
			}
			return a.markComplete(cmd, f, version)
		},
	}
	cmd.Flags().StringVar(&version, "version", "", "the migration to record as applied")
	cmd.Flags().BoolVar(&up, "up", true, "record it as applied (false is refused, see --help)")
	return cmd
}

// sourcegraphOnly are migrator commands ferry has no counterpart of by
// name, with what to run instead.
var sourcegraphOnly = map[string]string{
	"upgrade": "ferry has no multi-version upgrade planner: deploy the new release's migrations directory and run " +
		"`ferry db migrate` (it applies every pending migration in order and stops at a require-bbm gate), then `ferry bbm wait`",
	"downgrade":                  "deploy the older release's migrations directory and run `ferry db downto --to-release DIR --db all`",
	"drift":                      "ferry does not compare the live schema with a release's; `ferry db status` lists applied and pending migrations and exits 1 when the database is dirty",
	"validate":                   "`ferry db status` exits 1 when the database is dirty or a migration is pending",
	"describe":                   "`ferry db status` (--json for a machine-readable form) lists every migration and its state",
	"run-out-of-band-migrations": "Sourcegraph's out-of-band migrations are ferry's batched background migrations: `ferry bbm status`, `ferry bbm wait`",
}

func dbSourcegraphOnlyCmds() []*cobra.Command {
	var out []*cobra.Command
	for name, instead := range sourcegraphOnly {
		out = append(out, &cobra.Command{
			Use:                name,
			Short:              "Sourcegraph's migrator " + name + ": not in ferry (says what to run instead)",
			Hidden:             true,
			DisableFlagParsing: true,
			RunE: func(*cobra.Command, []string) error {
				return Usagef("%s is Sourcegraph's migrator command, not ferry's: %s", name, instead)
			},
		})
	}
	return out
}
