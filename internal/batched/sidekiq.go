package batched

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/queue"
	"github.com/ferrymigrate/ferry/scheduler"
	"github.com/ferrymigrate/ferry/worker"
)

// ExecutionWorkerClass is the Sidekiq class of batch execution jobs.
const ExecutionWorkerClass = "Ferry::BatchedBackgroundMigrationExecutionWorker"

// Queue is the Sidekiq queue batches run in.
const Queue = "background_migration"

// laneTTL bounds how long a lane survives a lost job; a live lane renews it
// after every batch (batches aim at seconds, and yield after 3x target).
const laneTTL = 2 * time.Minute

// ExecutionArgs are the args of one execution job: run the next batch of
// a migration in lane Lane. A lane is one slot of the migration's
// parallelism; Token fences off stale copies of a lane's job.
type ExecutionArgs struct {
	MigrationID int64
	Lane        int
	Token       string
}

// Kind is the Sidekiq class.
func (ExecutionArgs) Kind() string { return ExecutionWorkerClass }

// laneKey names the Redis key holding a lane's current token.
func laneKey(id int64, lane int) string {
	return "ferry:bbm:lane:" + strconv.FormatInt(id, 10) + ":" + strconv.Itoa(lane)
}

var (
	renewLane   = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)
	releaseLane = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
)

// Service connects an [Engine] to Sidekiq: a scheduler tick (every second,
// in every worker process) opens lanes for migrations that may run, and
// each lane is a chain of execution jobs in the background_migration
// queue, one batch per job, each pushing the next as soon as it finishes.
// More worker processes therefore run more batches at once, up to each
// migration's parallelism and the cluster's max-running.
type Service struct {
	engine *Engine
	rdb    redis.UniversalClient
	client *queue.Client
	log    *zap.Logger
}

// NewService returns a service pushing jobs through rdb.
func NewService(e *Engine, rdb redis.UniversalClient, log *zap.Logger) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	return &Service{engine: e, rdb: rdb, client: queue.NewClient(rdb), log: log.Named("bbm")}
}

// Register adds the execution worker to reg.
func (s *Service) Register(reg *worker.Registry) error {
	return worker.AddWorkerSafely(reg, worker.WorkFunc[ExecutionArgs](s.work))
}

// Run runs the scheduler until ctx is done. It does not close the engine:
// its batches may run for the worker's whole shutdown grace after the
// scheduler stops, and they need the engine's session until they end, or
// other workers take them for a dead worker's. Close the engine once the
// worker's jobs have returned.
func (s *Service) Run(ctx context.Context) error {
	if err := s.engine.startWaiting(ctx); err != nil {
		return err
	}
	sch := scheduler.New(s.log)
	if err := sch.Add("bbm", "@every 1s", s.tickOrSetUp); err != nil {
		return err
	}
	return sch.Run(ctx)
}

// tickOrSetUp ticks; when ferry's tables are gone (a `ferry db restore` of a
// backup from before ferry, or a dropped schema), it sets them up again, so
// running workers carry on without a restart.
func (s *Service) tickOrSetUp(ctx context.Context) error {
	err := s.Tick(ctx)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42P01" {
		return err
	}
	s.log.Warn("ferry's tables are gone (a restore?); setting them up again", zap.Error(err))
	return ferryschema.Ensure(ctx, s.engine.pool, s.log)
}

// Tick revives migrations whose finalizer died, rescues batches of dead
// workers, checks health of running migrations, and opens the lanes that
// are missing.
func (s *Service) Tick(ctx context.Context) error {
	// Only a settled engine judges other sessions gone (session.go).
	if s.engine.settled() {
		if _, err := s.engine.ReviveFinalizing(ctx, 0); err != nil {
			s.log.Warn("could not revive migrations whose finalizer died", zap.Error(err))
		}
	}
	rows, err := s.engine.pool.Query(ctx, `
		WITH settings AS (SELECT max_running, paused_all FROM ferry_bbm_settings WHERE id = 1),
		running AS (SELECT DISTINCT batched_background_migration_id AS id FROM batched_background_migration_jobs WHERE status = 1)
		SELECT m.id, m.max_parallel_batches, (m.slow_until > now()) IS TRUE, m.id IN (SELECT id FROM running)
		FROM batched_background_migrations m
		WHERE m.status = 1 AND (m.on_hold_until IS NULL OR m.on_hold_until < now())
		  AND NOT (SELECT paused_all FROM settings)
		  AND (m.allow_same_table OR NOT EXISTS (
		        SELECT 1 FROM batched_background_migrations o
		        WHERE o.table_name = m.table_name AND o.status = 1 AND o.id < m.id AND NOT o.allow_same_table))
		ORDER BY (m.id IN (SELECT id FROM running)) DESC, m.id
		LIMIT (SELECT max_running FROM settings)`)
	if err != nil {
		return err
	}
	type cand struct {
		id       int64
		parallel int
		slow     bool
		running  bool
	}
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.id, &c.parallel, &c.slow, &c.running); err != nil {
			rows.Close()
			return err
		}
		cands = append(cands, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rescued, err := s.engine.RescueAll(ctx)
	if err != nil {
		s.log.Warn("rescue of dead workers' batches failed", zap.Error(err))
	}
	for _, id := range rescued {
		// A dead worker's batch held one of the migration's lanes, and the
		// lane's job died with it: reopen them all now rather than wait for
		// the lane to expire or the job to be recovered. Jobs of live
		// lanes carry the old tokens and stop at their next batch (work),
		// so the number of lanes stays max_parallel_batches.
		if err := s.reopenLanes(ctx, id); err != nil {
			return err
		}
	}
	for _, c := range cands {
		if c.running {
			s.engine.CheckHealth(ctx, c.id)
		}
		lanes := c.parallel
		if c.slow {
			lanes = 1
		}
		for lane := range lanes {
			token := newToken()
			ok, err := s.rdb.SetNX(ctx, laneKey(c.id, lane), token, laneTTL).Result()
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if err := s.push(ctx, ExecutionArgs{MigrationID: c.id, Lane: lane, Token: token}); err != nil {
				s.rdb.Del(ctx, laneKey(c.id, lane))
				return err
			}
		}
	}
	return nil
}

// reopenLanes deletes the lane keys of migration id, so this tick opens
// them again with new jobs.
func (s *Service) reopenLanes(ctx context.Context, id int64) error {
	keys := make([]string, 0, MaxParallelBatches)
	for lane := range MaxParallelBatches {
		keys = append(keys, laneKey(id, lane))
	}
	return s.rdb.Del(ctx, keys...).Err()
}

func (s *Service) push(ctx context.Context, a ExecutionArgs) error {
	args, _ := json.Marshal([]any{a.MigrationID, a.Lane, a.Token})
	// retry: false: a batch's failure is recorded in PostgreSQL, and the
	// lane is re-opened by the scheduler; Sidekiq retries would only
	// duplicate lanes.
	_, err := s.client.Push(ctx, ExecutionWorkerClass, args, queue.PushOptions{Queue: Queue, Retry: queue.NoRetry})
	return err
}

func (s *Service) work(ctx context.Context, job *worker.Job[ExecutionArgs]) error {
	a := job.Args
	key := laneKey(a.MigrationID, a.Lane)
	ok, err := renewLane.Run(ctx, s.rdb, []string{key}, a.Token, laneTTL.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("bbm: lane %s: %w", key, err)
	}
	if ok == 0 {
		return nil // a stale copy of a lane that has moved on
	}
	out, err := s.engine.RunBatch(ctx, a.MigrationID)
	switch {
	case err == nil || errors.Is(err, context.Canceled):
	case isConnLoss(err):
		// The lane reopens at a tick once the database answers again.
		s.log.Warn("database unreachable; the migration's batches wait for it", zap.Int64("migration_id", a.MigrationID), zap.Error(err))
	default:
		s.log.Error("batch could not run", zap.Int64("migration_id", a.MigrationID), zap.Error(err))
	}
	if err == nil && out == Ran {
		// Chain the next batch at once, without waiting for a tick. On
		// shutdown too: another worker continues the lane.
		if perr := s.push(context.WithoutCancel(ctx), a); perr == nil {
			return nil
		}
	}
	_ = releaseLane.Run(context.WithoutCancel(ctx), s.rdb, []string{key}, a.Token).Err()
	return nil
}

func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RescueAll re-queues the batches of dead workers, for every migration
// with running batches, and returns the migrations whose batches were
// rescued since the last call (here or by a claim).
func (e *Engine) RescueAll(ctx context.Context) ([]int64, error) {
	if e.Session() == 0 {
		return nil, nil
	}
	rows, err := e.pool.Query(ctx, `SELECT DISTINCT batched_background_migration_id FROM batched_background_migration_jobs WHERE status = 1`)
	if err != nil {
		return nil, err
	}
	ids, err := collectIDs(rows)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		// The migration's row lock: rescue changes its running count.
		_, err = tx.Exec(ctx, `SELECT 1 FROM batched_background_migrations WHERE id = $1 FOR UPDATE`, id)
		if err == nil {
			_, err = e.rescue(ctx, tx, id)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		_ = tx.Rollback(ctx)
		if err != nil {
			return nil, err
		}
	}
	// Every rescue since the last call, this one's and claims' alike.
	e.mu.Lock()
	defer e.mu.Unlock()
	rescued := make([]int64, 0, len(e.rescued))
	for id := range e.rescued {
		rescued = append(rescued, id)
	}
	clear(e.rescued)
	return rescued, nil
}

// CheckHealth evaluates and applies the health signals of migration id
// (rate-limited per engine).
func (e *Engine) CheckHealth(ctx context.Context, id int64) {
	m, t, err := e.loadMigration(ctx, id)
	if err != nil {
		return
	}
	e.maybeCheckHealth(ctx, m, t)
}

func (e *Engine) loadMigration(ctx context.Context, id int64) (*Migration, *Target, error) {
	m, err := scanMigration(e.pool.QueryRow(ctx, `SELECT `+migrationCols+` FROM batched_background_migrations WHERE id = $1`, id))
	if err != nil {
		return nil, nil, err
	}
	t, err := ResolveTarget(ctx, e.pool, m.Table, m.Column)
	if err != nil {
		return nil, nil, err
	}
	return m, t, nil
}
