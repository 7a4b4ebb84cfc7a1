package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

func newSetupCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Create or upgrade ferry's own PostgreSQL tables",
		Long: `Create or upgrade ferry's tables (batched background migrations, their
jobs and transition logs, the legacy background_migration_jobs tracking
table, settings). Idempotent and safe to run from many hosts at once: it
holds an advisory lock. ` + "`ferry worker`" + ` does the same at start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Each database has its own batched migrations, so its own
			// ferry tables.
			dbs := a.Cfg.DatabaseNames()
			if len(dbs) <= 1 {
				dbs = []string{config.DefaultDatabase}
			}
			for _, db := range dbs {
				pool, err := a.DBNamed(cmd.Context(), db)
				if err != nil {
					return err
				}
				if err := ferryschema.Apply(cmd.Context(), pool); err != nil {
					return a.dbErr(db, err)
				}
				v, err := ferryschema.Current(cmd.Context(), pool)
				if err != nil {
					return a.dbErr(db, err)
				}
				if len(dbs) > 1 {
					fmt.Fprintf(a.Out, "%s: ferry schema is at version %d\n", db, v)
				} else {
					fmt.Fprintf(a.Out, "ferry schema is at version %d\n", v)
				}
			}
			return nil
		},
	}
}
