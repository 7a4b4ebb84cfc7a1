package batched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/logrepeat"
)

// Config configures an [Engine].
type Config struct {
	Logger   *zap.Logger
	Registry *Registry
	// TargetBatchDuration is what adaptive sizing aims a batch at
	// (default 2s); a migration's target_batch_ms overrides it.
	TargetBatchDuration time.Duration
	// Identity is recorded on job rows (the Sidekiq process identity).
	Identity string
	Health   HealthConfig
	// Database, when set, is the engine's database's name among several
	// (GitLab's main and ci): the commands the read model prints name it
	// (`ferry bbm resume ci_3`, `ferry bbm resume-all --db ci`), since
	// without it they would be refused as ambiguous.
	Database string
	// Trace, when set, hears of each sub-batch statement and each pacing
	// canary, so a benchmark can set them beside what its own load felt
	// (bench/bbm -trace). It is called on the goroutines of the batches,
	// several at once when several run: it must be safe for concurrent
	// use and return at once.
	Trace Tracer
}

// Tracer hears what a batch did, for benchmarks (Config.Trace).
type Tracer interface {
	// Statement: a sub-batch statement ran from from to to.
	Statement(from, to time.Time)
	// Canary: a canary sent at at took lat; overlap says whether it ran
	// while a sub-batch statement did.
	Canary(at time.Time, lat time.Duration, overlap bool)
}

// Engine runs batches of batched background migrations. Several engines,
// in one process or many, share the work through row locks in PostgreSQL;
// every state change is a transaction there. Call [Engine.Start] before
// running batches and Close when done.
type Engine struct {
	pool     *pgxpool.Pool
	reg      *Registry
	log      *zap.Logger
	target   time.Duration
	identity string
	health   HealthConfig
	database string  // Config.Database
	trace    Tracer  // Config.Trace
	cat      catalog // statistics views the health indicators read

	// probes: read probes of the tables of queued migrations, for their
	// estimate when no migration finished here yet (estimate.go).
	probes probeCache
	// crashed simulates a process death in tests: nothing more is recorded.
	crashed atomic.Bool
	// probeState: whether sub-batches can probe the sessions they block
	// (probeUntried, probeOK, probeBroken).
	probeState atomic.Int32

	mu sync.Mutex
	// session: the engine's number (session.go), 0 before Start;
	// settledFrom: since when its heartbeats succeed without a gap (zero
	// while they fail).
	session     int64
	settledFrom time.Time
	hbStop      context.CancelFunc
	hbDone      chan struct{}
	closed      bool      // Close ran: no new session
	beatAt      time.Time // last successful heartbeat
	// running: claim tokens of the batches this engine's goroutines run.
	running    map[int64]struct{}
	lastHealth map[int64]time.Time
	pacers     map[int64]pacer // contention pacing per migration, carried from batch to batch
	// rescued: migrations with a dead worker's batch rescued since the
	// last RescueAll (claims rescue too); their lanes need reopening.
	rescued map[int64]struct{}
	// slowed logs "slowed to one batch at a time" per migration once
	// when it starts, every minute while it lasts, and when it ends.
	slowed logrepeat.Log[int64]
	// skipped logs, per migration, batches skipped because there is
	// nothing left to do (Plan.Skip).
	skipped logrepeat.Log[int64]
}

// NewEngine returns an engine on pool. Name pool's connections with an
// application_name starting with "ferry" (ferry's CLI does): contention
// pacing slows migrations while other sessions use the database, and tells
// ferry's own idle connections apart by that name.
func NewEngine(pool *pgxpool.Pool, cfg Config) *Engine {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if name := pool.Config().ConnConfig.RuntimeParams["application_name"]; !cfg.Health.Disabled && !strings.HasPrefix(name, ownAppNamePrefix) {
		cfg.Logger.Warn("the pool's connections are not named ferry*: batched background migrations will count them as other sessions and pace for them",
			zap.String("application_name", name))
	}
	if cfg.Registry == nil {
		cfg.Registry = NewRegistry()
	}
	if cfg.TargetBatchDuration <= 0 {
		cfg.TargetBatchDuration = 2 * time.Second
	}
	if cfg.Identity == "" {
		h, _ := os.Hostname()
		cfg.Identity = h + ":" + strconv.Itoa(os.Getpid())
	}
	return &Engine{
		pool: pool, reg: cfg.Registry, log: cfg.Logger.Named("bbm"), target: cfg.TargetBatchDuration,
		identity: cfg.Identity, health: cfg.Health.withDefaults(), database: cfg.Database, trace: cfg.Trace, cat: pgCatalog, lastHealth: map[int64]time.Time{},
		pacers:  map[int64]pacer{},
		rescued: map[int64]struct{}{},
		running: map[int64]struct{}{},
	}
}

// Registry returns the engine's class registry.
func (e *Engine) Registry() *Registry { return e.reg }

// Pool returns the engine's pool.
func (e *Engine) Pool() *pgxpool.Pool { return e.pool }

func (e *Engine) targetFor(ms *int) time.Duration {
	if ms != nil && *ms > 0 {
		return time.Duration(*ms) * time.Millisecond
	}
	return e.target
}

// Outcome is what one [Engine.RunBatch] call did.
type Outcome int

// Outcomes.
const (
	// Ran: a batch ran (it may have failed; see the job row).
	Ran Outcome = iota
	// NoCapacity: the migration may not start another batch now (its
	// parallelism, the cluster's max-running, its table is busy, or this
	// engine's own heartbeat lags, e.g. just after the database was away).
	NoCapacity
	// NotExecutable: paused, on hold, pause-all, finished or missing.
	NotExecutable
	// Waiting: every range is handed out; batches still run elsewhere.
	Waiting
	// Completed: this call moved the migration to finished or failed.
	Completed
)

func (o Outcome) String() string {
	return [...]string{"ran", "no-capacity", "not-executable", "waiting", "completed"}[o]
}

// mode says who claims: background workers need an active, not held
// migration and a free slot; finalize runs a finalizing one regardless.
type mode int

const (
	modeBackground mode = iota
	modeFinalize
)

// claim is a batch handed to this engine.
type claim struct {
	mig    *Migration
	tgt    *Target
	plan   *Plan
	jobID  int64
	lo, hi int64
	cursor *int64
	size   int // rows in the range when created
	sub    int
	tries  int
	// token is unique to this claim: every write of the batch checks it,
	// so a batch claimed again (after a rescue, even by the same engine)
	// cannot be written by the goroutine that had it before.
	token int64
}

// RunBatch claims the next batch of migration id and runs it to the end.
func (e *Engine) RunBatch(ctx context.Context, id int64) (Outcome, error) {
	return e.runBatch(ctx, id, modeBackground)
}

func (e *Engine) runBatch(ctx context.Context, id int64, md mode) (Outcome, error) {
	if e.Session() == 0 {
		if err := e.startWaiting(ctx); err != nil {
			return NotExecutable, err
		}
	}
	if !e.sessionFresh() {
		return NoCapacity, nil // the heartbeat is behind (session.go): not now, not never
	}
	cl, out, err := e.claim(ctx, id, md)
	if isLockTimeout(err) && md == modeBackground && !e.health.Disabled {
		// Reading the next range waited on a table lock (e.g. an ALTER
		// TABLE holding or queued for ACCESS EXCLUSIVE): hold, as for a
		// sub-batch that waits.
		if m, t, lerr := e.loadMigration(ctx, id); lerr == nil {
			e.applyHealth(ctx, m, []Signal{e.lockWaitSignal(ctx, m, t.OID, "reading the next range", e.health.LockTimeout)})
			return NotExecutable, nil
		}
	}
	if err != nil || cl == nil {
		return out, err
	}
	defer e.claimEnded(cl.token)
	e.execute(ctx, cl)
	if md == modeBackground {
		e.maybeCheckHealth(ctx, cl.mig, cl.tgt)
	}
	return Ran, nil
}

func (e *Engine) claim(ctx context.Context, id int64, md mode) (*claim, Outcome, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, NotExecutable, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	m, err := scanMigration(tx.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, NotExecutable, nil
	}
	if err != nil {
		return nil, NotExecutable, err
	}
	now := time.Now()
	switch md {
	case modeBackground:
		if m.Status != Active || (m.OnHoldUntil != nil && m.OnHoldUntil.After(now)) {
			return nil, NotExecutable, nil
		}
	case modeFinalize:
		if m.Status != Finalizing {
			return nil, NotExecutable, nil
		}
	}
	if _, err := e.rescue(ctx, tx, id); err != nil {
		return nil, NotExecutable, err
	}
	var running int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 AND status = 1`, id).Scan(&running); err != nil {
		return nil, NotExecutable, err
	}
	parallel := m.MaxParallel
	if m.SlowUntil != nil && m.SlowUntil.After(now) {
		parallel = 1
	}
	if running >= parallel {
		return nil, NoCapacity, nil
	}
	if running > 0 && md == modeBackground {
		// Pause-all stops new batches of running migrations too (one with
		// parallel batches always has one running); those running finish.
		var pausedAll bool
		if err := tx.QueryRow(ctx, `SELECT paused_all FROM ferry_bbm_settings WHERE id = 1`).Scan(&pausedAll); err != nil {
			return nil, NotExecutable, err
		}
		if pausedAll {
			return nil, NotExecutable, nil
		}
	}
	if running == 0 && md == modeBackground {
		// Going from idle to running changes the number of running
		// migrations: serialise that cluster-wide on the settings row. Every
		// other change of a migration's running count holds its row lock,
		// so the count read here cannot go stale before we commit.
		var maxRunning int
		var pausedAll bool
		if err := tx.QueryRow(ctx, `SELECT max_running, paused_all FROM ferry_bbm_settings WHERE id = 1 FOR UPDATE`).Scan(&maxRunning, &pausedAll); err != nil {
			return nil, NotExecutable, err
		}
		if pausedAll {
			return nil, NotExecutable, nil
		}
		var others int
		var tableBusy bool
		if err := tx.QueryRow(ctx, `
			SELECT count(DISTINCT j.batched_background_migration_id),
			       coalesce(bool_or(`+tableKey("o")+` = `+tableKey("m")+` AND NOT (m.allow_same_table AND o.allow_same_table)), false)
			FROM batched_background_migration_jobs j
			JOIN batched_background_migrations o ON o.id = j.batched_background_migration_id
			JOIN batched_background_migrations m ON m.id = $1
			WHERE j.status = 1 AND j.batched_background_migration_id <> $1`, id).Scan(&others, &tableBusy); err != nil {
			return nil, NotExecutable, err
		}
		if others >= maxRunning || tableBusy {
			return nil, NoCapacity, nil
		}
	}
	cls, ok := e.reg.Lookup(m.Class)
	if !ok {
		return nil, NotExecutable, e.failMigration(ctx, tx, m, fmt.Sprintf("class %s is not registered in this ferry binary", m.Class))
	}
	tgt, err := ResolveTarget(ctx, tx, m.Table, m.Column)
	if err != nil {
		if IsBadInput(err) {
			return nil, NotExecutable, e.failMigration(ctx, tx, m, err.Error())
		}
		return nil, NotExecutable, err
	}
	var items []json.RawMessage
	if err := json.Unmarshal(m.Args, &items); err != nil {
		return nil, NotExecutable, e.failMigration(ctx, tx, m, "job_arguments: "+err.Error())
	}
	plan, err := cls.Plan(PlanContext{Target: tgt, Args: items})
	if err != nil {
		return nil, NotExecutable, e.failMigration(ctx, tx, m, err.Error())
	}
	cl := &claim{mig: m, tgt: tgt, plan: plan, token: newClaimToken()}
	e.claimStarted(cl.token)
	committed := false
	defer func() {
		if !committed {
			e.claimEnded(cl.token)
		}
	}()

	// Retriable jobs first (failed with attempts left, or pending): a
	// failure shows up, and is retried or split, while the operator is
	// still watching, not at the tail of a week-long migration.
	var prev int16
	err = tx.QueryRow(ctx, `
		SELECT id, min_value, max_value, batch_size, sub_batch_size, cursor_value, attempts, status
		FROM batched_background_migration_jobs
		WHERE batched_background_migration_id = $1 AND (status = 0 OR (status = 2 AND attempts < 3))
		ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`, id).Scan(&cl.jobID, &cl.lo, &cl.hi, &cl.size, &cl.sub, &cl.cursor, &cl.tries, &prev)
	switch {
	case err == nil:
		cl.tries++
		if _, err := tx.Exec(ctx, `
			UPDATE batched_background_migration_jobs SET status = 1, attempts = attempts + 1, started_at = now(),
				finished_at = NULL, updated_at = now(), worker_identity = $2, worker_session = $3, claim_token = $4,
				-- where this try starts: a try that moved past it before its
				-- worker died made progress and uses no attempt (rescue)
				metrics = coalesce(metrics, '{}') || jsonb_build_object('attempt_from', cursor_value)
			WHERE id = $1`, cl.jobID, e.identity, e.Session(), cl.token); err != nil {
			return nil, NotExecutable, err
		}
		if err := logTransition(ctx, tx, cl.jobID, JobStatus(prev), JobRunning, "", ""); err != nil {
			return nil, NotExecutable, err
		}
	case errors.Is(err, pgx.ErrNoRows):
		found, err := e.newRange(ctx, tx, cl)
		if err != nil {
			return nil, NotExecutable, err
		}
		if !found {
			out, err := e.complete(ctx, tx, m, running)
			if err != nil {
				return nil, NotExecutable, err
			}
			return nil, out, tx.Commit(ctx)
		}
	default:
		return nil, NotExecutable, err
	}
	if err := tx.Commit(ctx); err != nil {
		// If the commit's reply was lost, the job may be running under
		// this claim with no goroutine on it: forgetting the token lets
		// this engine's next rescue give it back.
		return nil, NotExecutable, err
	}
	committed = true
	return cl, Ran, nil
}

// newRange creates the next job: the next batch_size existing rows after
// the highest range handed out so far (keyset; id gaps cost nothing).
func (e *Engine) newRange(ctx context.Context, tx pgx.Tx, cl *claim) (bool, error) {
	m := cl.mig
	var start int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(max_value) + 1, $2) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, m.ID, m.MinValue).Scan(&start); err != nil {
		return false, err
	}
	if start > m.MaxValue {
		return false, nil
	}
	col := Quote(m.Column)
	if !e.health.Disabled {
		// This reads the table while holding the migration's (and maybe
		// the settings') row lock: it must not queue behind a table lock
		// (an ALTER TABLE) and stall every other engine. Only this read:
		// waits on our own bookkeeping rows are not a health signal.
		var prev string
		if err := tx.QueryRow(ctx, `SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)`,
			strconv.FormatInt(e.health.LockTimeout.Milliseconds(), 10)).Scan(&prev, nil); err != nil {
			return false, err
		}
		defer func() { _, _ = tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, prev) }()
	}
	var lo, hi *int64
	var n int
	if err := tx.QueryRow(ctx, `SELECT min(k)::bigint, max(k)::bigint, count(*) FROM (SELECT `+col+` AS k FROM `+cl.tgt.Ident()+
		` WHERE `+col+` >= $1 AND `+col+` <= $2 ORDER BY `+col+` LIMIT $3) x`, start, m.MaxValue, m.BatchSize).Scan(&lo, &hi, &n); err != nil {
		return false, fmt.Errorf("bbm: next batch of %s: %w", cl.tgt.Ident(), err)
	}
	if n == 0 {
		return false, nil
	}
	if n < m.BatchSize {
		// The last batch reaches to max_value so the cursor moves past it.
		v := m.MaxValue
		hi = &v
	}
	cl.lo, cl.hi, cl.size, cl.sub, cl.tries = *lo, *hi, n, min(m.SubBatchSize, n), 1
	if err := tx.QueryRow(ctx, `
		INSERT INTO batched_background_migration_jobs
			(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, pause_ms,
			 status, attempts, started_at, worker_identity, worker_session, claim_token)
		VALUES ($1, $2, $3, $4, $5, $6, 1, 1, now(), $7, $8, $9) RETURNING id`,
		m.ID, cl.lo, cl.hi, cl.size, cl.sub, m.PauseMs, e.identity, e.Session(), cl.token).Scan(&cl.jobID); err != nil {
		return false, err
	}
	return true, logTransition(ctx, tx, cl.jobID, JobPending, JobRunning, "", "")
}

// complete runs when no work is left to hand out: finished only when every
// job succeeded (GitLab's "jobs need to be succeeded"), failed when some
// job is out of attempts, otherwise wait for the running ones.
func (e *Engine) complete(ctx context.Context, tx pgx.Tx, m *Migration, running int) (Outcome, error) {
	if running > 0 {
		return Waiting, nil
	}
	var notOK int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 AND status <> 3`, m.ID).Scan(&notOK); err != nil {
		return NotExecutable, err
	}
	if notOK > 0 {
		if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 4, updated_at = now() WHERE id = $1`, m.ID); err != nil {
			return NotExecutable, err
		}
		e.log.Warn("batched background migration failed: some jobs are out of attempts", append(zapMigration(m), zap.Int("failed_jobs", notOK))...)
		return Completed, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 3, finished_at = now(), updated_at = now(),
		on_hold_until = NULL, hold_reason = NULL WHERE id = $1`, m.ID); err != nil {
		return NotExecutable, err
	}
	e.log.Info("batched background migration finished", zapMigration(m)...)
	return Completed, nil
}

func (e *Engine) failMigration(ctx context.Context, tx pgx.Tx, m *Migration, reason string) error {
	if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET status = 4, hold_reason = $2, updated_at = now() WHERE id = $1`, m.ID, truncate(reason, 1000)); err != nil {
		return err
	}
	e.log.Error("batched background migration failed", append(zapMigration(m), zap.String("reason", reason))...)
	return tx.Commit(ctx)
}

// rescue marks failed the running jobs of migration id whose engine is gone
// (sessionAlive), so they are retried from their cursor, and this engine's
// own jobs that none of its goroutines runs any more (an outcome that could
// not be recorded). A worker death counts as an attempt, so a batch that
// kills its worker (e.g. out of memory) cannot loop forever. Other engines
// are judged only once this one is settled (session.go), and only while
// the database sees this one alive too (its own heartbeat, in the same
// statement): behind a pooler whose connections were all busy for seconds,
// this statement and every engine's heartbeat waited alike, and the others'
// stale heartbeats said nothing about them (a live worker's batch was taken
// over, using one of its attempts). Call it holding
// the migration's row lock: claims of the migration, which register their
// token before they commit, are then not half done.
func (e *Engine) rescue(ctx context.Context, tx pgx.Tx, id int64) (int, error) {
	rows, err := tx.Query(ctx, `
		WITH dead AS (
			UPDATE batched_background_migration_jobs j SET status = 2, finished_at = now(), updated_at = now(),
				-- an outcome lost with the connection is nobody's fault, and a
				-- try that committed sub-batches before its worker died is no
				-- poison batch: neither uses an attempt
				attempts = CASE WHEN j.worker_session = $3 OR `+triedForward+` THEN greatest(j.attempts - 1, 0) ELSE j.attempts END
			WHERE j.batched_background_migration_id = $1 AND j.status = 1
			  AND (($2 AND j.worker_session IS DISTINCT FROM $3 AND `+sessionAlive("$3")+`
			        AND ((j.worker_session IS NOT NULL AND NOT `+sessionAlive("j.worker_session")+`)
			          OR (j.worker_session IS NULL AND j.updated_at < now() - interval '1 hour')))
			    OR (j.worker_session = $3 AND NOT coalesce(j.claim_token = ANY($4::bigint[]), false)))
			RETURNING j.id, j.worker_identity, j.worker_session = $3 AS own, j.attempts, `+triedForward+` AS forward)
		INSERT INTO batched_background_migration_job_transition_logs
			(batched_background_migration_job_id, previous_status, next_status, exception_class, exception_message)
		SELECT id, 1, 2, CASE WHEN own THEN 'Ferry::LostOutcome' ELSE 'Ferry::WorkerDied' END,
			left(CASE WHEN own THEN 'the outcome of this batch could not be recorded (the database was unreachable)'
				ELSE 'worker ' || coalesce(worker_identity, '?') || ' stopped while running this batch' END ||
				CASE WHEN forward AND NOT own THEN '; it resumes after the last committed sub-batch (this try moved it forward, so it used no attempt)'
					WHEN own OR attempts < $5 THEN '; it resumes after the last committed sub-batch'
					ELSE '; that was its last attempt (' || attempts || ' tries ended this way or failed), so the migration fails: '
						|| 'once you know why workers stop on it (out of memory? killed?), ferry bbm retry resumes it after the last committed sub-batch' END, 1000)
		FROM dead RETURNING batched_background_migration_job_id`, id, e.settled(), e.Session(), e.runningTokens(), MaxAttempts)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var jid int64
		if err := rows.Scan(&jid); err != nil {
			return n, err
		}
		n++
		e.log.Warn("batch of a dead worker will be retried", zap.Int64("migration_id", id), zap.Int64("job_id", jid))
		e.mu.Lock()
		e.rescued[id] = struct{}{}
		e.mu.Unlock()
	}
	return n, rows.Err()
}

// triedForward is true for a running job whose current try committed a
// sub-batch: its cursor moved past where the try started (claim records
// that in metrics.attempt_from; a first try starts at no cursor).
const triedForward = `(j.cursor_value IS DISTINCT FROM (j.metrics->>'attempt_from')::bigint)`

// newClaimToken returns a claim token: random, so no two claims of any
// engines share one (63 bits), and never 0.
func newClaimToken() int64 { return rand.Int64N(math.MaxInt64) + 1 }

func logTransition(ctx context.Context, tx pgx.Tx, jobID int64, from, to JobStatus, class, msg string) error {
	var c, m *string
	if class != "" {
		c = &class
	}
	if msg != "" {
		msg = truncate(msg, 1000)
		m = &msg
	}
	_, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_job_transition_logs
		(batched_background_migration_job_id, previous_status, next_status, exception_class, exception_message)
		VALUES ($1, $2, $3, left($4, 100), $5)`, jobID, from, to, c, m)
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	r := []rune(s)
	for len(string(r)) > n {
		r = r[:len(r)-1]
	}
	return string(r)
}

func zapMigration(m *Migration) []zap.Field {
	return []zap.Field{zap.Int64("migration_id", m.ID), zap.String("job_class_name", m.Class),
		zap.String("table_name", m.Table), zap.String("column_name", m.Column), zap.ByteString("job_arguments", m.Args)}
}

// isTimeout: GitLab's TIMEOUT_EXCEPTIONS (statement timeout, lock timeout).
func isTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "57014" || pe.Code == "55P03")
}

// isLockTimeout: lock_not_available, i.e. our lock_timeout ran out while
// another session held a lock we needed.
func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}
