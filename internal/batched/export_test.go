package batched

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// SimulateCrash makes e behave like a killed process: it records nothing more.
func SimulateCrash(e *Engine) { e.crashed.Store(true) }

// UseCatalog points e's health indicators at other relations (tables of
// fabricated rows shaped like the statistics views).
func UseCatalog(e *Engine, activity, progressVacuum, replication string) {
	e.cat = catalog{activity: activity, progressVacuum: progressVacuum, replication: replication, locks: pgCatalog.locks, archiver: e.cat.archiver}
}

// UseArchiver points e's WAL archiving indicator at a relation of
// fabricated rows (archive_mode, current_wal, last_archived_wal).
func UseArchiver(e *Engine, relation string) { e.cat.archiver = relation }

// EvaluateAll runs the health indicators and also returns the errors of
// those that could not run.
var EvaluateAll = (*Engine).evaluate

// Settled reports whether e may judge other engines' sessions gone.
func Settled(e *Engine) bool { return e.settled() }

// Claim is one claim of a batch, for tests that play two claims at once.
type Claim = claim

// ClaimBatch claims the next batch of migration id as a background worker.
func ClaimBatch(ctx context.Context, e *Engine, id int64) (*Claim, error) {
	cl, _, err := e.claim(ctx, id, modeBackground)
	return cl, err
}

// RunClaim runs a claimed batch to the end and records its outcome.
func RunClaim(ctx context.Context, e *Engine, cl *Claim) {
	defer e.claimEnded(cl.token)
	e.execute(ctx, cl)
}

// WriteSubBatch runs one sub-batch of limit rows of cl from its start.
func WriteSubBatch(ctx context.Context, e *Engine, cl *Claim, limit int) error {
	conn, err := e.batchConn(ctx, cl)
	if err != nil {
		return err
	}
	defer e.releaseBatchConn(ctx, conn)
	_, _, _, err = e.subBatchSet(ctx, conn, cl, e.setStatement(cl), cl.lo, limit, cl.cursor, false)
	if errors.Is(err, errCursorMoved) {
		_, err = readCursor(ctx, conn, cl)
	}
	return err
}

// ErrLostOwnership is what a write of a batch claimed again elsewhere gets.
var ErrLostOwnership = errLostOwnership

// WriteSubBatchAt runs one sub-batch of cl from its start, expecting the
// job's cursor at cursor (what a claim believes after its last reply).
func WriteSubBatchAt(ctx context.Context, e *Engine, cl *Claim, limit int, cursor *int64) error {
	conn, err := e.batchConn(ctx, cl)
	if err != nil {
		return err
	}
	defer e.releaseBatchConn(ctx, conn)
	_, _, _, err = e.subBatchSet(ctx, conn, cl, e.setStatement(cl), cl.lo, limit, cursor, false)
	return err
}

// ErrCursorMoved is what a sub-batch gets when the job's cursor is not
// where its claim last saw it.
var ErrCursorMoved = errCursorMoved

// RecordSuccess records cl as done up to cursor, as a batch that believes
// it committed that far does.
func RecordSuccess(ctx context.Context, e *Engine, cl *Claim, cursor int64, rows int64) error {
	defer e.claimEnded(cl.token)
	return e.succeed(ctx, cl, result{rows: rows, sub: 1, cursor: &cursor, elapsed: 1})
}

// ErrCommitsLost is what recording a batch gets when its last commits are gone.
var ErrCommitsLost = errCommitsLost

// SchedulerPicks returns the ids the scheduler gives batches to now
// (candidatesSQL), in its order.
func SchedulerPicks(ctx context.Context, e *Engine) ([]int64, error) {
	rows, err := e.pool.Query(ctx, `SELECT id FROM (`+candidatesSQL+`) c(id, parallel, slow, running)`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
