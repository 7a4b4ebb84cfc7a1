package legacy

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/pgerr"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// PerformBatch performs jobs of one class (each a JSON argument array)
// together, in one transaction, when the class is a [BatchMigration]:
// all of them or none. Their tracking rows are marked succeeded in the
// same transaction (unless NoAutoTrack). It returns ErrNotBatchable when
// they cannot be performed together (fewer than two, a class without
// PerformBatch, no database); on that or any other error the caller
// performs them one by one, which names the job that fails.
func (r *Runner) PerformBatch(ctx context.Context, class string, args []json.RawMessage) (err error) {
	class = normalizeClass(class)
	r.Registry.mu.RLock()
	batch := r.Registry.m[class].batch
	r.Registry.mu.RUnlock()
	begin, ok := r.DB.(interface {
		Begin(context.Context) (pgx.Tx, error)
	})
	if batch == nil || len(args) < 2 || !ok {
		return ErrNotBatchable
	}
	for i, a := range args {
		args[i] = normalizeArgs(a) // as Prepare reads them
	}
	defer recoverPanic(&err)
	perform, err := batch(ctx, r.env(class), class, args)
	if err != nil {
		return err
	}
	tx, err := begin.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op after Commit
	if err := perform(ctx, tx); err != nil {
		return pgerr.WithDetails(err)
	}
	if !r.NoAutoTrack {
		if err := markSucceededMany(ctx, tx, class, args); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		// The server may have committed before the error reached us: the
		// jobs must not be performed again at once as if nothing happened.
		return fmt.Errorf("%w: %w", sidekiq.ErrBatchOutcomeUnknown, err)
	}
	return nil
}
