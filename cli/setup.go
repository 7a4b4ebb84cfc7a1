package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/schema"
)

func init() {
	commands = append(commands, func(a *App) *cobra.Command {
		return &cobra.Command{
			Use:   "setup",
			Short: "Create or upgrade ferry's own PostgreSQL tables",
			Long: `Create or upgrade ferry's tables (batched background migrations, their
jobs and transition logs, the legacy background_migration_jobs tracking
table, settings). Idempotent and safe to run from many hosts at once: it
holds an advisory lock. ` + "`ferry worker`" + ` does the same at start.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				pool, err := a.DB(cmd.Context())
				if err != nil {
					return err
				}
				if err := schema.Apply(cmd.Context(), pool); err != nil {
					return err
				}
				v, err := schema.Current(cmd.Context(), pool)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.Out, "ferry schema is at version %d\n", v)
				return nil
			},
		}
	})
}

// ensureSchema creates or upgrades ferry's tables for the commands that
// use them. Tables of a newer ferry are left alone with a warning: during
// a rolling deploy an older worker that restarts after the new release
// upgraded them must come back up (versions only add). `ferry setup`
// refuses instead, so an operator sees it.
func (a *App) ensureSchema(ctx context.Context, db schema.Querier) error {
	err := schema.Apply(ctx, db)
	if errors.Is(err, schema.ErrNewerSchema) {
		a.Log.Warn("ferry's tables were set up by a newer ferry; running on them as they are (upgrade this binary)", zap.Error(err))
		return nil
	}
	return err
}
