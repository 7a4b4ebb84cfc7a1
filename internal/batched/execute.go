package batched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgerr"
	"github.com/ferrymigrate/ferry/internal/sleep"
	"github.com/ferrymigrate/ferry/worker"
)

// Limits of the failure handling (GitLab's constants).
const (
	MaxAttempts        = 3
	minJobsForRatio    = 50
	maxFailedRatio     = 0.5
	overrunFactor      = 3 // a batch running 3x its target yields the rest
	subBatchReduceBy   = 2
	shutdownGrace      = 10 * time.Second
	appNamePrefix      = "ferry-bbm:"
	errClassShutdown   = "Ferry::Shutdown"
	errClassLockWait   = "Ferry::LockWait"
	errClassLost       = "Ferry::LostOwnership"
	errClassTimeout    = "ActiveRecord::QueryCanceled"
	errClassStatement  = "PG::Error"
	errClassJobFailure = "Ferry::JobError"
)

var errLostOwnership = errors.New("bbm: this batch was taken over by another worker (its session was considered dead)")

// errCursorMoved: the job's cursor is not where this claim last saw it
// (a sub-batch whose COMMIT reply was lost committed after all), or the
// job is no longer this claim's; readCursor tells which.
var errCursorMoved = errors.New("bbm: the batch's cursor moved")

type result struct {
	rows    int64
	subs    int
	sub     int
	elapsed time.Duration
	cursor  *int64
	err     error
	yield   bool // stopped early on purpose; the rest becomes a new job
	stopped bool // the yield is the worker's stop (not an overrun)
	pace    *pacing
}

// execute runs a claimed batch sub-batch by sub-batch and records the
// outcome. Failures are recorded on the job row, never returned: a batch
// failing is the engine's business, not the Sidekiq job's.
func (e *Engine) execute(ctx context.Context, cl *claim) {
	res := e.runSubBatches(ctx, cl)
	if e.crashed.Load() {
		return
	}
	lockWait := isLockTimeout(res.err) && !e.health.Disabled
	err := e.retryConnLoss(ctx, "recording a batch's outcome", func(rec context.Context) error {
		switch {
		case res.err == nil && res.yield:
			return e.yieldJob(rec, cl, res, errClassShutdown, !res.stopped)
		case lockWait:
			// Another session holds a lock we need: not the batch's fault,
			// so no attempt is used and the size stays.
			return e.yieldJob(rec, cl, res, errClassLockWait, false)
		case res.err == nil:
			return e.succeed(rec, cl, res)
		default:
			return e.fail(rec, cl, res)
		}
	})
	if err == nil && lockWait {
		// The rest runs again after a hold that backs off while the lock stays.
		rec, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		e.applyHealth(rec, cl.mig, []Signal{e.lockWaitSignal(rec, cl.mig, cl.tgt.OID, "a sub-batch", e.health.LockTimeout)})
	}
	switch {
	case err == nil, errors.Is(err, errLostOwnership), errors.Is(err, errCommitsLost):
	case errors.Is(err, pgx.ErrNoRows):
		// The migration's row is gone: deleted, or a `ferry db restore`
		// put back a database from before it. Nothing to give back.
		e.log.Warn("batch's migration no longer exists (deleted, or the database was restored); its outcome is not recorded",
			zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID))
	default:
		e.log.Error("could not record batch outcome; this worker gives the batch back once the database answers again",
			zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID), zap.Error(err))
	}
}

func (e *Engine) runSubBatches(ctx context.Context, cl *claim) (res result) {
	res = result{sub: max(cl.sub, 1), cursor: cl.cursor}
	if cl.plan.Skip {
		if _, n, ok := e.skipped.On(cl.mig.ID, time.Now()); ok {
			// A migration that migrates nothing must not finish unseen.
			why := cl.plan.SkipReason
			if why == "" {
				why = "its class says there is nothing left to do"
			}
			e.log.Warn("batched background migration skips its batches: "+why, zap.Int64("migration_id", cl.mig.ID),
				zap.String("class", cl.mig.Class), zap.String("table", cl.mig.Table), zap.Int("batches", n))
		}
		return res
	}
	target := e.targetFor(cl.mig.TargetBatchMs)
	budget := subBatchBudget(target)
	// Contention pacing (contention.go): a probe in each sub-batch's
	// transaction, or, where it cannot run, a sample on this connection
	// after each sub-batch; a sample that fails turns it off for this
	// batch.
	var pc pacer
	sampling := !e.health.Disabled
	if sampling {
		pc = e.pacerFor(cl.mig.ID)
		sampling = pc.enabled()
	}
	var paused, queued time.Duration
	shared := true
	minDuty, blocked0, minCap := 1.0, pc.blocked, time.Duration(0)
	if sampling && pc.samples == 0 {
		// A migration's first batch looks before it leaps: its first
		// sub-batch would otherwise run at full size into a busy database.
		if pr, err := (contentionIndicator{cat: e.cat}).sample(ctx, e.pool); err == nil {
			pc.observe(pr.busy, pr.recent, time.Now())
		}
	}
	// The closed loop's canary (pace_control.go), started once the batch
	// is paced; statements remembers when sub-batches ran, so each canary
	// counts as overlapping one or not.
	var cn *canary
	var statements spans
	canaryOff, canaries, maxDuty, vacuumed := false, 0, 0.0, false
	defer func() {
		if cn != nil {
			cn.stop()
		}
	}()
	if sampling {
		defer func() {
			e.storePacer(cl.mig, pc)
			res.pace = &pacing{Duty: pc.duty(), Busy: pc.load, Paused: paused.Seconds(), MinD: minDuty,
				Blocked: pc.blocked - blocked0, MinCap: float64(minCap.Microseconds()) / 1000, Canaries: canaries, MaxD: maxDuty, Vacuum: vacuumed}
			if pc.closedLoop() {
				res.pace.Impact = &pc.ctl.impact
			}
		}()
	}
	stmt := ""
	if cl.plan.Set != "" {
		stmt = e.setStatement(cl)
	}
	conn, err := e.openBatch(ctx, cl, stmt, &res, &queued, false)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, errLostOwnership) {
			res.yield, res.stopped = true, true // shutdown: not the batch's fault
		} else {
			res.err = err
		}
		return res
	}
	defer func() {
		if conn != nil {
			e.releaseBatchConn(ctx, conn)
		}
	}()
	start := cl.lo
	if cl.cursor != nil {
		start = *cl.cursor + 1
	}
	t0 := time.Now()
	lastWork := pc.budget(budget)
	stopping := worker.Stopping(ctx)
	for start <= cl.hi {
		if ctx.Err() != nil || worker.IsStopping(ctx) {
			// The worker is stopping: end at this sub-batch boundary
			// rather than run the batch on into the shutdown timeout.
			res.yield, res.stopped = true, true
			break
		}
		if time.Since(t0)-queued > overrunFactor*target && res.rows > 0 {
			res.yield = true // the table got slower: hand the rest to a new, smaller batch
			break
		}
		if sampling && pc.paced() && pc.ctl.on() && cn == nil && !canaryOff {
			if cn, err = startCanary(ctx, e.pool); err != nil {
				canaryOff = true
				e.log.Debug("no connection for the pacing canary; pacing this batch open-loop", zap.Int64("migration_id", cl.mig.ID), zap.Error(err))
			}
		}
		s0 := time.Now()
		if cn != nil && pc.paced() {
			cn.fire(s0, lastWork, pc.ctl.busyShots(s0))
		}
		limit := res.sub
		var hi *int64
		var n int64
		var pr probe
		if stmt != "" {
			hi, n, pr, err = e.subBatchSet(ctx, conn, cl, stmt, start, limit, res.cursor, sampling)
		} else {
			hi, n, pr, err = e.subBatchDo(ctx, conn, cl, start, limit, res.cursor, sampling)
		}
		retry := false
		switch {
		case errors.Is(err, errCursorMoved):
			// An earlier sub-batch whose reply was lost committed after
			// all: go on from the row's cursor, never over it again.
			res.cursor, err = readCursor(ctx, conn, cl)
			retry = err == nil
		case isConnLoss(err) && ctx.Err() == nil:
			e.releaseBatchConn(ctx, conn)
			conn, err = e.openBatch(ctx, cl, stmt, &res, &queued, true)
			retry = err == nil
		}
		if retry {
			start = cl.lo
			if res.cursor != nil {
				start = *res.cursor + 1
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil && !errors.Is(err, errLostOwnership) {
				res.yield, res.stopped = true, true // shutdown: not the batch's fault
				break
			}
			res.err = pgerr.WithDetails(err)
			break
		}
		res.subs++
		if hi == nil {
			break
		}
		work := time.Since(s0)
		lastWork = work
		statements.add(s0, s0.Add(work))
		if e.trace != nil {
			e.trace.Statement(s0, s0.Add(work))
		}
		res.rows += n
		v := *hi
		res.cursor = &v
		start = v + 1
		if n < int64(limit) {
			break
		}
		pause := time.Duration(cl.mig.PauseMs) * time.Millisecond
		if sampling && !pr.ok {
			if pr, err = (contentionIndicator{cat: e.cat}).sample(ctx, conn); err != nil {
				sampling = false
				if ctx.Err() == nil {
					e.log.Debug("contention sample failed; not pacing this batch", zap.Int64("migration_id", cl.mig.ID), zap.Error(err))
				}
			}
		}
		if cn != nil {
			before := pc.ctl.duty
			n, ok := cn.collect(&pc.ctl, &statements, e.trace)
			canaries += n
			if pc.ctl.duty != before {
				e.log.Debug("closed-loop pacing: duty cycle changed", zap.Int64("migration_id", cl.mig.ID), zap.Float64("from", before),
					zap.Float64("to", pc.ctl.duty), zap.Float64("others_p99_impact", pc.ctl.impact))
			}
			if !ok {
				cn.stop()
				cn, canaryOff = nil, true
				e.log.Debug("pacing canary failed; pacing this batch open-loop", zap.Int64("migration_id", cl.mig.ID))
			}
		}
		if sampling && pr.ok {
			pc.observe(pr.busy, pr.recent, time.Now())
			pc.observeBlocked(pr.blocked, work, budget)
			pc.vacuum = pr.vacuum
			vacuumed = vacuumed || pr.vacuum
			minDuty = min(minDuty, pc.duty())
			if pc.paced() {
				maxDuty = max(maxDuty, pc.duty())
			}
			if pc.stmtCap > 0 && (minCap == 0 || pc.stmtCap < minCap) {
				minCap = pc.stmtCap
			}
			if p, burst := pc.pause(work); p > 0 {
				// The shared clock (contention.go) turns the batch's own
				// pause into its turn among all paced batches.
				if shared && pc.paced() {
					if sp, err := reservePace(ctx, conn, burst, burst+p); err == nil {
						// Time queued behind other batches is theirs:
						// it does not count towards this batch's
						// duration, or P batches sharing the clock
						// would each shrink to 1/P of the size.
						queued += max(sp-p, 0)
						p = sp
					} else if shared = false; ctx.Err() == nil {
						e.log.Warn("shared pacing clock unavailable; this batch paces on its own", zap.Int64("migration_id", cl.mig.ID), zap.Error(err))
					}
				}
				if p > pause {
					paused += p - pause
					pause = p
				}
			}
		}
		res.sub = nextSubBatch(limit, n, work, pc.budget(budget), cl.size)
		if cn != nil && pause > 0 && pc.paced() {
			// Several requests arriving between sub-batches for each one
			// arriving during one: the idle p99 needs more of them.
			cn.fire(time.Now(), pause, idleShots(pause, pc.ctl.decided))
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
			case <-stopping:
			case <-time.After(pause):
			}
		}
	}
	if cn != nil {
		// The canaries of the pause after the last burst: a batch is
		// often one burst and its pause, and they would be lost with it.
		n, _ := cn.collect(&pc.ctl, &statements, e.trace)
		canaries += n
	}
	res.elapsed = time.Since(t0) - queued
	if res.yield && res.cursor != nil && *res.cursor >= cl.hi {
		res.yield = false // stopped right at the end: it is simply done
	}
	return res
}

// setStatement builds the single statement of a Set plan. It finds the
// sub-batch's upper bound (keyset, LIMIT), records progress on the job row
// only if this engine still owns the job, and updates the rows only if that
// succeeded, all atomically: a batch taken over by another engine cannot
// write, and a retry never redoes committed sub-batches.
func (e *Engine) setStatement(cl *claim) string {
	col, tbl := Quote(cl.mig.Column), cl.tgt.Ident()
	where := cl.plan.andWhere()
	return `WITH s AS (
  SELECT max(k)::bigint AS hi, count(*) AS n FROM (
    SELECT ` + col + ` AS k FROM ` + tbl + ` WHERE ` + col + ` >= $1 AND ` + col + ` <= $2 ORDER BY ` + col + ` LIMIT $3) x),
c AS (
  UPDATE batched_background_migration_jobs j SET cursor_value = s.hi, rows_done = j.rows_done + s.n, updated_at = now()
  FROM s WHERE j.id = $4 AND j.status = 1 AND j.claim_token = $5 AND j.cursor_value IS NOT DISTINCT FROM $6::bigint
    AND s.hi IS NOT NULL
  RETURNING 1),
u AS (
  UPDATE ` + tbl + ` AS t SET ` + cl.plan.Set + `
  WHERE t.` + col + ` >= $1 AND t.` + col + ` <= (SELECT hi FROM s) AND EXISTS (SELECT 1 FROM c)` + where + `)
SELECT (SELECT hi FROM s), (SELECT n FROM s), (SELECT count(*) FROM c)`
}

// prepare prepares stmt on conn inside a transaction with the batch's
// lock_timeout, when the pool prepares statements (real sessions, see
// config.NewPool): parsing an UPDATE takes its table lock, and pgx would
// otherwise prepare it before the pipelined BEGIN, where a table lock held
// by a migration's ALTER TABLE could be waited on without a limit.
// Prepared once per connection, the statement is not planned again for
// every sub-batch.
func (e *Engine) prepare(ctx context.Context, conn *pgxpool.Conn, cl *claim, stmt string) error {
	if e.pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeCacheStatement {
		return nil
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, localSettings, e.localSettingsArgs(cl)...); err != nil {
		return err
	}
	if _, err := tx.Prepare(ctx, stmt, stmt); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// batchConn takes a connection for a batch's sub-batches.
func (e *Engine) batchConn(ctx context.Context, _ *claim) (*pgxpool.Conn, error) {
	return e.pool.Acquire(ctx)
}

// releaseBatchConn gives the connection back outside any transaction.
func (e *Engine) releaseBatchConn(ctx context.Context, conn *pgxpool.Conn) {
	rollback(ctx, conn.Conn())
	conn.Release()
}

// resume waits for the database after a batch lost its connection (a
// restart, a failover, a terminated backend), then returns a new
// connection and sets res.cursor to the job's cursor as committed: a
// sub-batch whose COMMIT reply was lost may or may not have committed, and
// only the row knows. The wait counts as queued time, not as the batch's
// duration. errLostOwnership: the batch was taken over meanwhile.
func (e *Engine) resume(ctx context.Context, cl *claim, res *result, queued *time.Duration) (*pgxpool.Conn, error) {
	t0 := time.Now()
	defer func() { *queued += time.Since(t0) }()
	e.log.Warn("a batch lost its database connection; it goes on from its last committed sub-batch once the database answers",
		zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID))
	for wait := reconnectMin; ; wait = min(2*wait, reconnectMax) {
		if !sleep.For(ctx, wait) {
			return nil, ctx.Err()
		}
		conn, err := e.batchConn(ctx, cl)
		if err == nil {
			var cur *int64
			if cur, err = readCursor(ctx, conn, cl); err == nil {
				res.cursor = cur
				return conn, nil
			}
			e.releaseBatchConn(ctx, conn)
		}
		if !isConnLoss(err) {
			return nil, err
		}
	}
}

// readCursor reads the claimed job's committed cursor; errLostOwnership
// when the job is no longer this claim's.
func readCursor(ctx context.Context, conn *pgxpool.Conn, cl *claim) (*int64, error) {
	var cur *int64
	err := conn.QueryRow(ctx, `SELECT cursor_value FROM batched_background_migration_jobs
		WHERE id = $1 AND status = 1 AND claim_token = $2`, cl.jobID, cl.token).Scan(&cur)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errLostOwnership
	}
	return cur, err
}

// openBatch returns a connection ready for the batch's sub-batches, its
// statement prepared. After a lost connection (lost) it first waits for the
// database and re-reads the committed cursor (resume); losses on the way
// are waited out too.
func (e *Engine) openBatch(ctx context.Context, cl *claim, stmt string, res *result, queued *time.Duration, lost bool) (*pgxpool.Conn, error) {
	for {
		var conn *pgxpool.Conn
		var err error
		if lost {
			conn, err = e.resume(ctx, cl, res, queued)
		} else {
			conn, err = e.batchConn(ctx, cl)
		}
		if err == nil && stmt != "" {
			if err = e.prepare(ctx, conn, cl, stmt); err != nil {
				e.releaseBatchConn(ctx, conn)
				conn = nil
			}
		}
		if err == nil || !isConnLoss(err) || ctx.Err() != nil {
			return conn, err
		}
		lost = true
	}
}

// localSettings is the first statement of every sub-batch transaction:
// statement_timeout, lock_timeout and an application_name that health
// checks use to find our backends, all SET LOCAL. Never session settings:
// behind a transaction pooler (PgBouncer) they would stay on a server
// connection that other clients get next. The pool must send statements
// unprepared (pgx's exec mode, config.PoolConfig): a statement pgx first
// prepares outside the transaction would take its table lock while
// parsing, before lock_timeout applies.
const localSettings = `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),
	set_config('application_name', $3, true)`

func (e *Engine) localSettingsArgs(cl *claim) []any {
	lockTimeout := "0" // only statement_timeout bounds waits when health checks are off
	if !e.health.Disabled {
		lockTimeout = strconv.FormatInt(e.health.LockTimeout.Milliseconds(), 10)
	}
	return []any{strconv.Itoa(cl.mig.StmtTimeoutMs), lockTimeout, appNamePrefix + strconv.FormatInt(cl.mig.ID, 10)}
}

// subBatchSet runs one sub-batch in one round trip: BEGIN, the settings
// (localSettings), the statement, with withProbe the probe, COMMIT,
// pipelined.
func (e *Engine) subBatchSet(ctx context.Context, conn *pgxpool.Conn, cl *claim, stmt string, start int64, limit int, cursor *int64, withProbe bool) (*int64, int64, probe, error) {
	withProbe = withProbe && e.probeWorks(ctx, conn, cl)
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(localSettings, e.localSettingsArgs(cl)...)
	var hi *int64
	var n, owned int64
	var pr probe
	b.Queue(stmt, start, cl.hi, limit, cl.jobID, cl.token, cursor).QueryRow(func(r pgx.Row) error {
		return r.Scan(&hi, &n, &owned)
	})
	if withProbe {
		b.Queue(e.probeQuery(), cl.tgt.OID).QueryRow(pr.scan)
	}
	b.Queue("COMMIT")
	err := conn.SendBatch(ctx, b).Close()
	if err != nil {
		rollback(ctx, conn.Conn())
		return nil, 0, probe{}, err
	}
	if hi != nil && owned == 0 {
		return nil, 0, probe{}, errCursorMoved // or lost: readCursor tells
	}
	pr.ok = withProbe
	return hi, n, pr, nil
}

// subBatchDo runs a Do plan: bounds, ownership check, the class's work,
// the progress record and, with withProbe, the probe in one transaction.
func (e *Engine) subBatchDo(ctx context.Context, conn *pgxpool.Conn, cl *claim, start int64, limit int, cursor *int64, withProbe bool) (*int64, int64, probe, error) {
	withProbe = withProbe && e.probeWorks(ctx, conn, cl)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, 0, probe{}, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, localSettings, e.localSettingsArgs(cl)...); err != nil {
		return nil, 0, probe{}, err
	}
	col := Quote(cl.mig.Column)
	var hi *int64
	var n int64
	if err := tx.QueryRow(ctx, `SELECT max(k)::bigint, count(*) FROM (SELECT `+col+` AS k FROM `+cl.tgt.Ident()+
		` WHERE `+col+` >= $1 AND `+col+` <= $2 ORDER BY `+col+` LIMIT $3) x`, start, cl.hi, limit).Scan(&hi, &n); err != nil {
		return nil, 0, probe{}, err
	}
	if hi == nil {
		return nil, 0, probe{}, nil
	}
	tag, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET cursor_value = $3, rows_done = rows_done + $4, updated_at = now()
		WHERE id = $1 AND status = 1 AND claim_token = $2 AND cursor_value IS NOT DISTINCT FROM $5::bigint`, cl.jobID, cl.token, *hi, n, cursor)
	if err != nil {
		return nil, 0, probe{}, err
	}
	if tag.RowsAffected() == 0 {
		return nil, 0, probe{}, errCursorMoved // or lost: readCursor tells
	}
	if _, err := cl.plan.Do(ctx, tx, start, *hi); err != nil {
		return nil, 0, probe{}, err
	}
	var pr probe
	if withProbe {
		if err := pr.scan(tx.QueryRow(ctx, e.probeQuery(), cl.tgt.OID)); err != nil {
			return nil, 0, probe{}, err
		}
		pr.ok = true
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, 0, probe{}, err
	}
	return hi, n, pr, nil
}

// Whether the probe can run in this database (Engine.probeState).
const (
	probeUntried int32 = iota
	probeOK
	probeBroken
)

func (e *Engine) probeQuery() string { return contentionIndicator{cat: e.cat}.probeSQL() }

// probeWorks reports whether the probe can run in this database, trying it
// once per engine outside a transaction: inside one, an error (statistics
// views revoked) would abort the sub-batch.
func (e *Engine) probeWorks(ctx context.Context, conn *pgxpool.Conn, cl *claim) bool {
	switch e.probeState.Load() {
	case probeOK:
		return true
	case probeBroken:
		return false
	}
	var pr probe
	if err := pr.scan(conn.QueryRow(ctx, e.probeQuery(), cl.tgt.OID)); err != nil {
		var pe *pgconn.PgError
		if ctx.Err() == nil && errors.As(err, &pe) { // a lost connection says nothing about the views
			e.probeState.Store(probeBroken)
			e.log.Warn("cannot read pg_stat_activity/pg_locks: sub-batches will not see the sessions they block", zap.Error(err))
		}
		return false
	}
	e.probeState.Store(probeOK)
	return true
}

func rollback(ctx context.Context, c *pgx.Conn) {
	if c.PgConn().TxStatus() != 'I' {
		_, _ = c.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
}

func metricsJSON(cl *claim, res result) string {
	op := cl.plan.Operation
	if op == "" {
		op = "sub_batch"
	}
	m := map[string]any{
		"timings":     map[string]any{op: []float64{res.elapsed.Seconds()}},
		"sub_batches": res.subs,
		"rows":        res.rows,
	}
	if res.pace != nil {
		m["pacing"] = res.pace
	}
	// A string, not []byte: in pgx's exec mode (config.PoolConfig) []byte
	// is bytea, which a jsonb column refuses.
	b, _ := json.Marshal(m)
	return string(b)
}

// finishTx locks the migration (every change of its running count does,
// see claim) and marks the job, if this engine still owns it.
func (e *Engine) finishTx(ctx context.Context, cl *claim, status JobStatus, res result, attemptsDelta int, errClass, errMsg string) (pgx.Tx, *Migration, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	m, err := scanMigration(tx.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, cl.mig.ID))
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, nil, err
	}
	// A success counts what this claim committed up to res.cursor: if the
	// row says less, commits it was told of are gone (synchronous_commit
	// off and a crash, or a failover to an asynchronous standby).
	tag, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET status = $3, finished_at = now(), updated_at = now(),
			metrics = $4, sub_batch_size = $5, attempts = greatest(attempts + $6, 0)
		WHERE id = $1 AND status = 1 AND claim_token = $2 AND ($3 <> 3 OR cursor_value IS NOT DISTINCT FROM $7::bigint)`,
		cl.jobID, cl.token, status, metricsJSON(cl, res), max(1, min(res.sub, cl.size)), attemptsDelta, res.cursor)
	if err == nil && tag.RowsAffected() == 0 {
		err = errLostOwnership
		if status == JobSucceeded {
			err = e.commitsLost(ctx, tx, cl, res)
		}
	}
	if err == nil {
		err = logTransition(ctx, tx, cl.jobID, JobRunning, status, errClass, errMsg)
	}
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, nil, err
	}
	return tx, m, nil
}

// errCommitsLost: a batch's last commits vanished; its job was handed back
// to resume from what the database kept.
var errCommitsLost = errors.New("bbm: commits this batch was told of are gone (database crash or failover); it resumes from its last kept sub-batch")

// commitsLost, inside finishTx, hands a job whose committed cursor is
// behind what its claim saw back as failed (no attempt used), so a claim
// resumes it from the cursor the database has: its rows are copied, none
// twice. Not ours any more: errLostOwnership.
func (e *Engine) commitsLost(ctx context.Context, tx pgx.Tx, cl *claim, res result) error {
	var kept *int64
	err := tx.QueryRow(ctx, `UPDATE batched_background_migration_jobs SET status = 2, updated_at = now()
		WHERE id = $1 AND status = 1 AND claim_token = $2 RETURNING cursor_value`, cl.jobID, cl.token).Scan(&kept)
	if errors.Is(err, pgx.ErrNoRows) {
		return errLostOwnership
	}
	if err == nil {
		err = logTransition(ctx, tx, cl.jobID, JobRunning, JobFailed, "Ferry::CommitsLost", errCommitsLost.Error())
	}
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		return err
	}
	e.log.Warn("a batch's last commits are gone (database crash or failover); it resumes from what the database kept",
		zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID), zap.Int64p("seen_cursor", res.cursor), zap.Int64p("kept_cursor", kept))
	return errCommitsLost
}

func (e *Engine) succeed(ctx context.Context, cl *claim, res result) error {
	tx, m, err := e.finishTx(ctx, cl, JobSucceeded, res, 0, "", "")
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if res.rows > 0 && res.elapsed > 0 {
		hi := DefaultMaxBatchSize
		if m.MaxBatchSize != nil {
			hi = *m.MaxBatchSize
		}
		target := e.targetFor(m.TargetBatchMs)
		// Only full batches say how big a batch may be; the tail is short.
		if res.rows >= int64(cl.size) {
			nb := nextSize(m.BatchSize, res.rows, res.elapsed, target, 1, hi)
			ns := min(max(res.sub, 1), nb)
			if nb != m.BatchSize || ns != m.SubBatchSize {
				if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET batch_size = $2, sub_batch_size = $3, updated_at = now() WHERE id = $1`, m.ID, nb, ns); err != nil {
					return err
				}
				e.log.Debug("batch size adapted", zap.Int64("migration_id", m.ID), zap.Int("from", m.BatchSize), zap.Int("to", nb),
					zap.Int("sub_batch_size", ns), zap.Duration("took", res.elapsed), zap.Int64("rows", res.rows))
			}
		}
	}
	return tx.Commit(ctx)
}

// yieldJob ends a batch early on purpose (shutdown, a lock wait, or it ran
// far over its target): the done part succeeds, the rest is handed out
// again. With shrink, an overrun also shrinks the batch size.
func (e *Engine) yieldJob(ctx context.Context, cl *claim, res result, class string, shrink bool) error {
	if res.cursor == nil {
		// Nothing done: give the whole batch back without using an attempt.
		msg := "stopped before the first sub-batch; will run again"
		if res.err != nil {
			msg = res.err.Error() + "; will run again"
		}
		tx, _, err := e.finishTx(ctx, cl, JobPending, res, -1, class, msg)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET finished_at = NULL WHERE id = $1`, cl.jobID); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	tx, m, err := e.finishTx(ctx, cl, JobSucceeded, res, 0, "", "")
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	done := *res.cursor
	var doneRows int64
	if err := tx.QueryRow(ctx, `UPDATE batched_background_migration_jobs SET max_value = $2, batch_size = greatest(rows_done, 1)
		WHERE id = $1 RETURNING rows_done`, cl.jobID, done).Scan(&doneRows); err != nil {
		return err
	}
	// If no later range was handed out, the rest simply goes back to the
	// keyset cursor: the next batches cover it at the new (after an
	// overrun: smaller) batch size. A fixed remainder job would run the
	// old, too big range again, overrunning piece by piece. Both ranges
	// are read under the migration's row lock (finishTx), as in newRange.
	var later bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM batched_background_migration_jobs
		WHERE batched_background_migration_id = $1 AND id <> $2 AND max_value > $3)`, m.ID, cl.jobID, cl.hi).Scan(&later); err != nil {
		return err
	}
	var newID int64
	if later {
		if err := tx.QueryRow(ctx, `INSERT INTO batched_background_migration_jobs
			(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, pause_ms, status)
			VALUES ($1, $2, $3, $4, $5, $6, 0) RETURNING id`,
			m.ID, done+1, cl.hi, max(int64(cl.size)-doneRows, 1), max(1, res.sub), m.PauseMs).Scan(&newID); err != nil {
			return err
		}
	}
	if shrink && ctx.Err() == nil && res.elapsed > 0 && res.rows > 0 {
		// Overran: the table got slower. Shrink now rather than after the
		// next (also too long) batch.
		nb := nextSize(m.BatchSize, res.rows, res.elapsed, e.targetFor(m.TargetBatchMs), 1, m.BatchSize)
		if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET batch_size = $2, sub_batch_size = least(sub_batch_size, $2), updated_at = now() WHERE id = $1`, m.ID, nb); err != nil {
			return err
		}
	}
	e.log.Info("batch yielded; the rest runs as a new batch", zap.Int64("migration_id", m.ID), zap.Int64("job_id", cl.jobID),
		zap.Int64("new_job_id", newID), zap.Bool("rest_to_cursor", !later), zap.Int64("done_through", done), zap.Duration("took", res.elapsed))
	return tx.Commit(ctx)
}

func (e *Engine) fail(ctx context.Context, cl *claim, res result) error {
	timeout := isTimeout(res.err)
	class := errClassJobFailure
	var pe *pgconn.PgError
	switch {
	case errors.Is(res.err, errLostOwnership):
		e.log.Warn("batch lost to another worker", zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID))
		return errLostOwnership
	case timeout:
		class = errClassTimeout
	case errors.As(res.err, &pe):
		class = errClassStatement + "::" + pe.Code
	}
	// A timeout retries with smaller statements (GitLab: x0.75 down to
	// ~35% of the configured size); ferry halves, down to one row, since
	// the statement budget, not the configured size, is what matters.
	if timeout {
		res.sub = max(1, min(res.sub, cl.sub)/subBatchReduceBy)
	}
	tx, m, err := e.finishTx(ctx, cl, JobFailed, res, 0, class, res.err.Error())
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	e.log.Warn("batch failed", zap.Int64("migration_id", m.ID), zap.Int64("job_id", cl.jobID), zap.Int("attempt", cl.tries),
		zap.Bool("timeout", timeout), zap.Error(res.err))
	if timeout {
		if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET batch_size = greatest(batch_size / 2, 1),
			sub_batch_size = greatest(least(sub_batch_size, batch_size / 2), 1), updated_at = now() WHERE id = $1`, m.ID); err != nil {
			return err
		}
		if cl.tries >= MaxAttempts {
			if err := e.split(ctx, tx, cl, res); err != nil {
				return err
			}
		}
	}
	// Failed-ratio stop, checked after failures too (GitLab only reaches it
	// after successes, because the exception skips it).
	if m.StartedAt != nil {
		var total, failed int
		if err := tx.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 2) FROM batched_background_migration_jobs
			WHERE batched_background_migration_id = $1 AND created_at >= $2`, m.ID, *m.StartedAt).Scan(&total, &failed); err != nil {
			return err
		}
		if total >= minJobsForRatio && float64(failed)/float64(total) > maxFailedRatio && m.Status == Active {
			if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 4, updated_at = now(),
				hold_reason = $2 WHERE id = $1`, m.ID, fmt.Sprintf("stopped: %d of %d batches failed", failed, total)); err != nil {
				return err
			}
			e.log.Error("batched background migration stopped: too many failed batches", append(zapMigration(m), zap.Int("failed", failed), zap.Int("total", total))...)
		}
	}
	return tx.Commit(ctx)
}

// split halves the rest of a job that keeps timing out: this job keeps
// the first half of its remaining rows, a new job the second; both get
// fresh attempts (GitLab's split_and_retry!, on the part not yet done).
func (e *Engine) split(ctx context.Context, tx pgx.Tx, cl *claim, res result) error {
	from := cl.lo
	if res.cursor != nil {
		from = *res.cursor + 1
	}
	col := Quote(cl.mig.Column)
	var remaining int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+cl.tgt.Ident()+` WHERE `+col+` >= $1 AND `+col+` <= $2`, from, cl.hi).Scan(&remaining); err != nil {
		return err
	}
	half := remaining / 2
	if half < 1 {
		_, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET attempts = 0 WHERE id = $1`, cl.jobID)
		return err
	}
	var mid int64
	if err := tx.QueryRow(ctx, `SELECT `+col+`::bigint FROM `+cl.tgt.Ident()+` WHERE `+col+` >= $1 AND `+col+` <= $2 ORDER BY `+col+` OFFSET $3 LIMIT 1`,
		from, cl.hi, half-1).Scan(&mid); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migration_jobs SET max_value = $2, batch_size = $3, attempts = 0 WHERE id = $1`,
		cl.jobID, mid, half); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, pause_ms, status, attempts)
		VALUES ($1, $2, $3, $4, $5, $6, 2, 0)`, cl.mig.ID, mid+1, cl.hi, remaining-half, max(1, res.sub), cl.mig.PauseMs)
	e.log.Info("batch split after repeated timeouts", zap.Int64("migration_id", cl.mig.ID), zap.Int64("job_id", cl.jobID), zap.Int64("at", mid))
	return err
}
