package batched

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ferrymigrate/ferry/internal/sleep"
)

// FindByConfig finds the migration for a configuration (see [FindConfig]).
func (e *Engine) FindByConfig(ctx context.Context, class, table, column string, args []byte) (*Migration, error) {
	return FindConfig(ctx, e.pool, class, table, column, args)
}

// FindConfig finds the migration queued for a configuration on db (a pool
// or a transaction): args compared as jsonb, so spacing does not matter,
// and the table by any spelling when it exists ("public.events" finds a
// migration queued as "events"), by the name as given when it does not.
// Finalize, check and the schema-migration gates all match this way. It
// returns [ErrNotFound] when there is none, or no ferry tables at all.
func FindConfig(ctx context.Context, db Queryer, class, table, column string, args []byte) (*Migration, error) {
	if err := CheckConfig(class, table, column, args); err != nil {
		return nil, err
	}
	_, canon, err := canonicalArgs(args)
	if err != nil {
		return nil, err
	}
	names := []string{table}
	if t, err := ResolveTarget(ctx, db, table, column); err == nil {
		names = t.spellings(table)
	}
	m, err := scanMigration(db.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations
		WHERE job_class_name = $1 AND table_name = ANY($2) AND column_name = $3 AND job_arguments = $4::jsonb ORDER BY id LIMIT 1`,
		class, names, column, string(canon)))
	var pe *pgconn.PgError
	if errors.Is(err, pgx.ErrNoRows) || (errors.As(err, &pe) && pe.Code == "42P01") {
		return nil, fmt.Errorf("%w: Could not find batched background migration for the given configuration: %s", ErrNotFound,
			fmt.Sprintf(`{"job_class_name":%q,"table_name":%q,"column_name":%q,"job_arguments":%s}`, class, table, column, canon))
	}
	return m, err
}

// DeleteQueued deletes the migration of a configuration that schema
// migration version queued (or that records no version), with its jobs:
// GitLab's delete_batched_background_migration in a migration's down,
// so that migrating up again queues it afresh instead of finding the old
// one finished while the column it filled was dropped. It returns the
// deleted migration, nil when there is none or another version queued it.
func (e *Engine) DeleteQueued(ctx context.Context, class, table, column string, args []byte, version string) (*Migration, error) {
	m, err := e.FindByConfig(ctx, class, table, column, args)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tag, err := e.pool.Exec(ctx, `DELETE FROM batched_background_migrations
		WHERE id = $1 AND (queued_migration_version IS NULL OR queued_migration_version = $2)`, m.ID, version)
	if err != nil || tag.RowsAffected() == 0 {
		return nil, err
	}
	return m, nil
}

// SameConfig reports whether a and b name the same migration as
// FindConfig matches them, as far as that is known without a database
// (a dry run's plan): class and column equal, arguments equal as JSON,
// tables equal up to the public schema.
func SameConfig(a, b MigrationConfig) bool {
	if a.Class != b.Class || a.Column != b.Column || strings.TrimPrefix(a.Table, "public.") != strings.TrimPrefix(b.Table, "public.") {
		return false
	}
	ca, cb := jsonbText(a.Args), jsonbText(b.Args)
	return ca != nil && bytes.Equal(ca, cb)
}

// jsonbText is raw as jsonb compares it: spacing and the order of object
// keys do not matter (json.Marshal sorts map keys); nil when not JSON.
func jsonbText(raw json.RawMessage) []byte {
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = json.RawMessage("[]")
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&v) != nil || dec.More() {
		return nil
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return out
}

// transition changes a migration's status if it is in one of from.
func (e *Engine) transition(ctx context.Context, id int64, op string, to Status, extra string, msg string, from ...Status) (*Migration, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	m, err := scanMigration(tx.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, e.notFound(id)
	}
	if err != nil {
		return nil, err
	}
	ok := false
	for _, s := range from {
		ok = ok || m.Status == s
	}
	if !ok {
		return nil, &StateError{ID: id, Ref: Ref(e.database, id), Status: m.Status, Op: op, Msg: msg}
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = $2, updated_at = now()`+extra+` WHERE id = $1`, id, to); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	e.log.Info("batched background migration "+op, append(zapMigration(m), zap.Stringer("from", m.Status), zap.Stringer("to", to))...)
	m.Status = to
	return m, nil
}

// Pause pauses an active migration; running batches finish.
func (e *Engine) Pause(ctx context.Context, id int64) (*Migration, error) {
	return e.transition(ctx, id, "pause", Paused, "", "You can pause only `active` background migrations.", Active, Paused)
}

// Resume makes a paused migration active again, or a finalizing one whose
// finalize process is gone.
func (e *Engine) Resume(ctx context.Context, id int64) (*Migration, error) {
	if ids, err := e.ReviveFinalizing(ctx, id); err != nil {
		return nil, err
	} else if len(ids) > 0 {
		got, err := e.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		return got.Migration, nil
	}
	return e.transition(ctx, id, "resume", Active, ", started_at = now(), on_hold_until = NULL, hold_count = 0",
		"You can resume only `paused` background migrations.", Paused)
}

// Retry gives every failed job fresh attempts and makes a failed migration
// active again (GitLab's retry_failed_jobs!). Job rows keep their cursor,
// so only the rows not yet done run again.
func (e *Engine) Retry(ctx context.Context, id int64) (*Migration, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, id); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET attempts = 0, updated_at = now()
		WHERE batched_background_migration_id = $1 AND status = 2`, id); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return e.transition(ctx, id, "retry", Active, ", started_at = now(), on_hold_until = NULL, hold_count = 0, hold_reason = NULL",
		"You can retry only `failed` background migrations.", Failed)
}

// MarkFinished marks a migration finished without running the rest: every
// job not succeeded, and the range never handed out, are recorded as
// succeeded with who and when in the transition log. Data is not migrated;
// that is the operator's decision (GitLab's Support-only console recipe).
func (e *Engine) MarkFinished(ctx context.Context, id int64, who string) (*Migration, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	m, err := scanMigration(tx.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, e.notFound(id)
	}
	if err != nil {
		return nil, err
	}
	if m.Status.Done() {
		return m, nil
	}
	// Under a running finalize it would report "Done." with rows not
	// migrated.
	if f, err := liveFinalizer(ctx, tx, id, 0); err != nil {
		return nil, err
	} else if f != "" {
		return nil, fmt.Errorf("%w: migration %s is being finalized by %s; stop that finalize first, or let it finish", ErrInvalidState, Ref(e.database, id), f)
	}
	msg := fmt.Sprintf("marked finished by %s at %s (ferry bbm mark-finished)", who, time.Now().UTC().Format(time.RFC3339))
	if _, err := tx.Exec(ctx, `
		WITH j AS (
			UPDATE batched_background_migration_jobs n SET status = 3, finished_at = now(), updated_at = now()
			FROM batched_background_migration_jobs o
			WHERE n.id = o.id AND n.batched_background_migration_id = $1 AND n.status <> 3
			RETURNING n.id, o.status AS prev)
		INSERT INTO batched_background_migration_job_transition_logs
			(batched_background_migration_job_id, previous_status, next_status, exception_class, exception_message)
		SELECT id, prev, 3, 'Ferry::MarkedFinished', $2 FROM j`, id, msg); err != nil {
		return nil, err
	}
	var start int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(max_value) + 1, $2) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, id, m.MinValue).Scan(&start); err != nil {
		return nil, err
	}
	if start <= m.MaxValue {
		var jid int64
		if err := tx.QueryRow(ctx, `INSERT INTO batched_background_migration_jobs
			(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at, finished_at)
			VALUES ($1, $2, $3, 1, 1, 3, now(), now()) RETURNING id`, id, start, m.MaxValue).Scan(&jid); err != nil {
			return nil, err
		}
		if err := logTransition(ctx, tx, jid, JobPending, JobSucceeded, "Ferry::MarkedFinished", msg+"; range never run"); err != nil {
			return nil, err
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 3, finished_at = now(), updated_at = now(),
		on_hold_until = NULL, hold_reason = $2 WHERE id = $1`, id, msg); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	e.log.Warn("batched background migration marked finished without running", append(zapMigration(m), zap.String("by", who))...)
	m.Status = Finished
	return m, nil
}

// Finalize runs the rest of a migration synchronously (GitLab's
// BatchedMigrationRunner.finalize): blocked jobs get fresh attempts, the
// migration becomes finalizing (background workers leave it alone) and
// this process runs its batches, max_parallel_batches at a time, ignoring
// holds and max-running. It returns nil once the migration is finished.
func (e *Engine) Finalize(ctx context.Context, m *Migration) error {
	if m.Status.Done() {
		e.log.Warn("Batched background migration for the given configuration is already finished", zapMigration(m)...)
		return nil
	}
	// The session first: the migration records it as its finalizer, so if
	// this process dies the workers see it and take the migration back
	// (ReviveFinalizing).
	if err := e.startWaiting(ctx); err != nil {
		return err
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, m.ID); err != nil {
		return err
	}
	// A second finalize of the same migration would take it over, and
	// when interrupted hand it back to the workers under the first one.
	if who, err := liveFinalizer(ctx, tx, m.ID, e.Session()); err != nil {
		return err
	} else if who != "" {
		return fmt.Errorf("%w: migration %s is being finalized by %s; wait for it (`ferry bbm wait`), or stop that finalize first",
			ErrInvalidState, Ref(e.database, m.ID), who)
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET attempts = 0 WHERE batched_background_migration_id = $1 AND attempts >= $2 AND status = 2`, m.ID, MaxAttempts); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 5, updated_at = now(), on_hold_until = NULL, finalizer_session = $2 WHERE id = $1`,
		m.ID, e.Session()); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	// However it ends: the migration stops naming this engine as its
	// finalizer, and, when still finalizing (interrupted, or an error),
	// goes back to the workers.
	defer e.unfinalize(context.WithoutCancel(ctx), m.ID)
	g, gctx := errgroup.WithContext(ctx)
	for range max(1, m.MaxParallel) {
		g.Go(func() error {
			for wait := reconnectMin; ; {
				out, err := e.runBatch(gctx, m.ID, modeFinalize)
				if isConnLoss(err) && gctx.Err() == nil {
					// A restart or failover: finalize rides it out, as
					// the workers do.
					if !sleep.For(gctx, wait) {
						return gctx.Err()
					}
					wait = min(2*wait, reconnectMax)
					continue
				}
				if err != nil {
					return err
				}
				wait = reconnectMin
				switch out {
				case Ran:
					continue
				case Completed, NotExecutable:
					return nil
				}
				// Waiting for batches still running elsewhere.
				select {
				case <-gctx.Done():
					return gctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	var got *MigrationInfo
	if err := e.retryConnLoss(ctx, "finalize", func(ctx context.Context) (err error) {
		got, err = e.Get(ctx, m.ID)
		return err
	}); err != nil {
		return err
	}
	if !got.Status.Done() {
		return fmt.Errorf("%w: Batched migration %s could not be completed and a manual action is required. It is %s; see `ferry bbm show %s`",
			ErrFailedToFinalize, m.Class, got.Status, Ref(e.database, m.ID))
	}
	return nil
}

// Settings are the cluster-wide switches.
type Settings struct {
	MaxRunning int  `json:"max_running"`
	PausedAll  bool `json:"paused_all"`
}

// GetSettings reads the settings row.
func (e *Engine) GetSettings(ctx context.Context) (Settings, error) {
	var s Settings
	err := e.pool.QueryRow(ctx, `SELECT max_running, paused_all FROM ferry_bbm_settings WHERE id = 1`).Scan(&s.MaxRunning, &s.PausedAll)
	return s, err
}

// SetMaxRunning sets how many migrations may run at once, cluster-wide.
func (e *Engine) SetMaxRunning(ctx context.Context, n int) error {
	if n < 0 || n > 1000 {
		return fmt.Errorf("%w: max-running must be between 0 and 1000, got %d", ErrInvalidOption, n)
	}
	_, err := e.pool.Exec(ctx, `UPDATE ferry_bbm_settings SET max_running = $1, updated_at = now() WHERE id = 1`, n)
	return err
}

// SetParallel sets how many batches of migration id may run at once.
func (e *Engine) SetParallel(ctx context.Context, id int64, n int) error {
	if n < 1 || n > MaxParallelBatches {
		return fmt.Errorf("%w: parallel must be between 1 and %d, got %d", ErrInvalidOption, MaxParallelBatches, n)
	}
	tag, err := e.pool.Exec(ctx, `UPDATE batched_background_migrations SET max_parallel_batches = $2, updated_at = now() WHERE id = $1`, id, n)
	if err == nil && tag.RowsAffected() == 0 {
		err = e.notFound(id)
	}
	return err
}

// Forget deletes the migrations of table, with their jobs and transition
// logs, whatever their status: for throwaway tables (`ferry demo`, the
// benchmarks) that are dropped and made again.
func (e *Engine) Forget(ctx context.Context, table string) error {
	_, err := e.pool.Exec(ctx, `DELETE FROM batched_background_migrations WHERE table_name = $1`, table)
	return err
}

// SetPausedAll is the master switch: running batches finish, no new ones
// start (GitLab's execute_batched_migrations_on_schedule flag).
func (e *Engine) SetPausedAll(ctx context.Context, paused bool) error {
	_, err := e.pool.Exec(ctx, `UPDATE ferry_bbm_settings SET paused_all = $1, updated_at = now() WHERE id = 1`, paused)
	return err
}

// unfinalize ends this engine's finalize of migration id: one still
// finalizing becomes active again, and the finalizer is cleared.
func (e *Engine) unfinalize(ctx context.Context, id int64) {
	if _, err := e.pool.Exec(ctx, `UPDATE batched_background_migrations
		SET status = CASE WHEN status = 5 THEN 1 ELSE status END, finalizer_session = NULL, updated_at = now()
		WHERE id = $1 AND finalizer_session = $2`, id, e.Session()); err != nil {
		e.log.Warn("could not make the migration active again after an interrupted finalize", zap.Int64("migration_id", id), zap.Error(err))
	}
}

// liveFinalizer is the identity of the process finalizing migration id, if
// it is alive and is not the engine session self (0: none); "" otherwise.
func liveFinalizer(ctx context.Context, db Queryer, id, self int64) (string, error) {
	var who string
	err := db.QueryRow(ctx, `SELECT s.identity FROM batched_background_migrations m JOIN ferry_bbm_sessions s ON s.id = m.finalizer_session
		WHERE m.id = $1 AND m.status = 5 AND m.finalizer_session <> $2 AND `+sessionAlive("m.finalizer_session"), id, self).Scan(&who)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return who, err
}

// finalizerGone is an SQL condition on batched_background_migrations: it is
// finalizing, and the process that was finalizing it is gone (killed, or
// its connection lost). Migrations finalized by a ferry older than schema
// version 2 record no finalizer and stay as they are.
var finalizerGone = `status = 5 AND finalizer_session IS NOT NULL AND NOT ` + sessionAlive("finalizer_session")

// ReviveFinalizing makes migrations whose finalizer died active again, so
// the workers finish them (a finalize killed by SIGKILL or a dropped SSH
// session would otherwise leave them finalizing, worked on by no one). id
// 0 means all, as the scheduler asks: then only while the database sees
// this engine's own heartbeat fresh, as rescue judges (behind a starved
// pooler every heartbeat ages alike). An operator's resume of one id
// needs no session. It returns the ids revived.
func (e *Engine) ReviveFinalizing(ctx context.Context, id int64) ([]int64, error) {
	rows, err := e.pool.Query(ctx, `UPDATE batched_background_migrations SET status = 1, finalizer_session = NULL, updated_at = now()
		WHERE `+finalizerGone+` AND (id = $1::bigint OR ($1::bigint = 0 AND `+sessionAlive("$2::bigint")+`)) RETURNING id`, id, e.Session())
	if err != nil {
		return nil, err
	}
	ids, err := collectIDs(rows)
	for _, id := range ids {
		e.log.Warn("the finalize of this batched background migration stopped without finishing (its process is gone); it is active again and workers continue it",
			zap.Int64("migration_id", id))
	}
	return ids, err
}

// Unfinished returns migrations not finished or finalized.
func (e *Engine) Unfinished(ctx context.Context) ([]*MigrationInfo, error) {
	return e.list(ctx, `status NOT IN (3, 6)`)
}

// Executable returns the ids of active migrations not on hold, oldest
// first, at most one per table unless allowed (GitLab's DISTINCT ON).
func (e *Engine) Executable(ctx context.Context) ([]int64, error) {
	rows, err := e.pool.Query(ctx, `WITH `+executableCTEs+`
		SELECT id FROM batched_background_migrations m WHERE `+executableSQL+` ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// How often a RunLocal worker with nothing to run looks again: at once
// after work, backing off while there is none.
const (
	localPollMin = 20 * time.Millisecond
	localPollMax = 500 * time.Millisecond
)

// RunLocal runs batches in this process with n goroutines acting as
// workers, until ctx is done or, with untilIdle, no migration is active.
// `ferry demo` and tests use it; `ferry worker` spreads the same batches
// over Sidekiq jobs instead.
func (e *Engine) RunLocal(ctx context.Context, n int, untilIdle bool) error {
	if err := e.startWaiting(ctx); err != nil {
		return err
	}
	// Closed by the first worker that finds nothing active: the others may
	// be in a poll wait of up to localPollMax, which would hold the return.
	idle := make(chan struct{})
	var idleOnce sync.Once
	g, gctx := errgroup.WithContext(ctx)
	for range max(n, 1) {
		g.Go(func() error {
			// Nothing to run (held, paced or at its parallel limit): look
			// again soon, then less often, so idle workers do not load the
			// database they are being polite to.
			wait := localPollMin
			for gctx.Err() == nil {
				ids, err := e.Executable(gctx)
				if isConnLoss(err) && gctx.Err() == nil {
					ids = nil // the database is away (restart, failover): look again later
				} else if err != nil {
					return err
				}
				ran := false
				for _, id := range ids {
					out, err := e.RunBatch(gctx, id)
					if err != nil && gctx.Err() == nil {
						e.log.Error("batch", zap.Int64("migration_id", id), zap.Error(err))
					}
					if out == Ran || out == Completed {
						ran = true
						break
					}
				}
				if ran {
					wait = localPollMin
					continue
				}
				if untilIdle {
					var active int
					if err := e.pool.QueryRow(gctx, `SELECT count(*) FROM batched_background_migrations WHERE status IN (1, 5)`).Scan(&active); err == nil && active == 0 {
						idleOnce.Do(func() { close(idle) })
						return nil
					}
				}
				select {
				case <-gctx.Done():
				case <-idle:
					return nil
				case <-time.After(wait):
				}
				wait = min(2*wait, localPollMax)
			}
			return nil
		})
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

func collectIDs(rows pgx.Rows) ([]int64, error) { return pgx.CollectRows(rows, pgx.RowTo[int64]) }
