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
	"github.com/ferrymigrate/ferry/internal/sidekiq"
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
	// Database names the database of the migration when the service runs
	// several ([NewMultiService]). Absent for the default one
	// ([DefaultDatabase]), so its jobs and lane keys stay those of a
	// single-database worker.
	Database string `sidekiq:",optional"`
}

// Kind is the Sidekiq class.
func (ExecutionArgs) Kind() string { return ExecutionWorkerClass }

// laneKey names the Redis key holding a lane's current token. db is ""
// for the service's first database (the key a single-database worker
// uses), else the database's name: ids repeat across databases.
func laneKey(db string, id int64, lane int) string {
	prefix := "ferry:bbm:lane:"
	if db != "" {
		prefix += db + ":"
	}
	return prefix + strconv.FormatInt(id, 10) + ":" + strconv.Itoa(lane)
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
//
// A service may run the migrations of several databases (GitLab's main
// and ci), one engine each: each database keeps its own tables, limit,
// pause switch and pacing clock, and has its own tick, so a database that
// is away holds up only its own migrations.
type Service struct {
	dbs    []*serviceDB
	byJob  map[string]*serviceDB // by ExecutionArgs.Database
	rdb    redis.UniversalClient
	client *sidekiq.Client
	log    *zap.Logger
}

// Database is one named database's engine, for [NewMultiService].
type Database struct {
	Name   string
	Engine *Engine
}

type serviceDB struct {
	name   string // for logs; "" for NewService's one engine
	job    string // ExecutionArgs.Database and the lane keys' part: "" for the default
	engine *Engine
	log    *zap.Logger
}

// NewService returns a service running e's migrations, pushing jobs
// through rdb.
func NewService(e *Engine, rdb redis.UniversalClient, log *zap.Logger) *Service {
	return NewMultiService([]Database{{Engine: e}}, rdb, log)
}

// DefaultDatabase is the name of the default database (ferry's
// DATABASE_URL, GitLab's main): its execution jobs and lane keys carry no
// name, as a single-database worker's do, so the two kinds of workers can
// share its migrations during a rolling deploy.
const DefaultDatabase = "main"

// NewMultiService returns a service running the migrations of every
// database in dbs (names must be distinct).
func NewMultiService(dbs []Database, rdb redis.UniversalClient, log *zap.Logger) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Service{byJob: map[string]*serviceDB{}, rdb: rdb, client: sidekiq.NewClient(rdb), log: log.Named("bbm")}
	for _, d := range dbs {
		sd := &serviceDB{name: d.Name, engine: d.Engine, log: s.log}
		if d.Name != DefaultDatabase {
			sd.job = d.Name
		}
		if len(dbs) > 1 {
			sd.log = s.log.With(zap.String("database", d.Name))
		}
		s.dbs = append(s.dbs, sd)
		s.byJob[sd.job] = sd
	}
	return s
}

// Register adds the execution worker to reg.
func (s *Service) Register(reg *worker.Registry) error {
	return worker.AddWorkerSafely(reg, worker.WorkFunc[ExecutionArgs](s.work))
}

// Run runs the scheduler until ctx is done. It does not close the engines:
// their batches may run for the worker's whole shutdown grace after the
// scheduler stops, and they need the engine's session until they end, or
// other workers take them for a dead worker's. Close the engines once the
// worker's jobs have returned.
func (s *Service) Run(ctx context.Context) error {
	if len(s.dbs) == 1 {
		return s.runDB(ctx, s.dbs[0])
	}
	errs := make(chan error, len(s.dbs))
	for _, d := range s.dbs {
		go func() {
			err := s.runDB(ctx, d)
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("database %s: %w", d.name, err)
			}
			errs <- err
		}()
	}
	var first error
	for range s.dbs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// runDB starts d's engine, setting up ferry's tables first when they are
// missing (a database that was away when the worker started), then ticks.
func (s *Service) runDB(ctx context.Context, d *serviceDB) error {
	for {
		err := d.engine.startWaiting(ctx)
		if err == nil {
			break
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42P01" {
			return err
		}
		if err := ferryschema.Ensure(ctx, d.engine.pool, d.log); err != nil {
			return err
		}
	}
	sch := scheduler.New(d.log)
	if err := sch.Add("bbm", "@every 1s", func(ctx context.Context) error { return s.tickOrSetUp(ctx, d) }); err != nil {
		return err
	}
	return sch.Run(ctx)
}

// tickOrSetUp ticks; when ferry's tables are gone (a `ferry db restore` of a
// backup from before ferry, or a dropped schema), it sets them up again, so
// running workers carry on without a restart.
func (s *Service) tickOrSetUp(ctx context.Context, d *serviceDB) error {
	err := s.tick(ctx, d)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42P01" {
		return err
	}
	d.log.Warn("ferry's tables are gone (a restore?); setting them up again", zap.Error(err))
	return ferryschema.Ensure(ctx, d.engine.pool, d.log)
}

// Tick revives migrations whose finalizer died, rescues batches of dead
// workers, checks health of running migrations, and opens the lanes that
// are missing, in every database of the service.
func (s *Service) Tick(ctx context.Context) error {
	var errs []error
	for _, d := range s.dbs {
		if err := s.tick(ctx, d); err != nil {
			if d.name != "" {
				err = fmt.Errorf("database %s: %w", d.name, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// executableSQL is the condition on batched_background_migrations m of a
// migration that may get batches: active, not on hold, not under
// pause-all, and no older active migration on its table (unless allowed;
// GitLab's DISTINCT ON). It needs executableCTEs in the statement's WITH.
// Executable lists them; the scheduler picks from them (candidatesSQL).
var executableSQL = `m.status = 1 AND (m.on_hold_until IS NULL OR m.on_hold_until < now())
		  AND NOT (SELECT paused_all FROM ferry_bbm_settings WHERE id = 1)
		  AND m.id NOT IN (SELECT id FROM same_table_behind)`

// executableCTEs compute each active migration's table key once per
// statement: a key is a catalog lookup, and comparing every pair (a GitLab
// upgrade queues dozens at once) took 38 ms a tick with 100 of them.
var executableCTEs = `keyed AS MATERIALIZED (
		  SELECT b.id, b.allow_same_table, ` + tableKey("b") + ` AS k FROM batched_background_migrations b WHERE b.status = 1),
		same_table_behind AS (
		  SELECT m.id FROM keyed m JOIN keyed o ON o.k = m.k AND o.id < m.id AND NOT o.allow_same_table
		  WHERE NOT m.allow_same_table)`

// candidatesSQL picks the migrations the scheduler gives batches to: the
// executable ones, running ones first, then the oldest, at most
// max_running. The read model (cluster) reads the same picks to say who
// waits.
var candidatesSQL = `
		WITH running AS (SELECT DISTINCT batched_background_migration_id AS id FROM batched_background_migration_jobs WHERE status = 1),
		` + executableCTEs + `
		SELECT m.id, m.max_parallel_batches, (m.slow_until > now()) IS TRUE, m.id IN (SELECT id FROM running)
		FROM batched_background_migrations m
		WHERE ` + executableSQL + `
		ORDER BY (m.id IN (SELECT id FROM running)) DESC, m.id
		LIMIT (SELECT max_running FROM ferry_bbm_settings WHERE id = 1)`

func (s *Service) tick(ctx context.Context, d *serviceDB) error {
	e := d.engine
	// Only a settled engine judges other sessions gone (session.go).
	if e.settled() {
		if _, err := e.ReviveFinalizing(ctx, 0); err != nil {
			d.log.Warn("could not revive migrations whose finalizer died", zap.Error(err))
		}
	}
	rows, err := e.pool.Query(ctx, candidatesSQL)
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
	rescued, err := e.RescueAll(ctx)
	if err != nil {
		d.log.Warn("rescue of dead workers' batches failed", zap.Error(err))
	}
	for _, id := range rescued {
		// A dead worker's batch held one of the migration's lanes, and the
		// lane's job died with it: reopen them all now rather than wait for
		// the lane to expire or the job to be recovered. Jobs of live
		// lanes carry the old tokens and stop at their next batch (work),
		// so the number of lanes stays max_parallel_batches.
		if err := s.reopenLanes(ctx, d, id); err != nil {
			return err
		}
	}
	for _, c := range cands {
		if c.running {
			e.CheckHealth(ctx, c.id)
		}
		lanes := c.parallel
		if c.slow {
			lanes = 1
		}
		for lane := range lanes {
			token := newToken()
			key := laneKey(d.job, c.id, lane)
			ok, err := s.rdb.SetNX(ctx, key, token, laneTTL).Result()
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if err := s.push(ctx, ExecutionArgs{MigrationID: c.id, Lane: lane, Token: token, Database: d.job}); err != nil {
				s.rdb.Del(ctx, key)
				return err
			}
		}
	}
	return nil
}

// reopenLanes deletes the lane keys of migration id, so this tick opens
// them again with new jobs.
func (s *Service) reopenLanes(ctx context.Context, d *serviceDB, id int64) error {
	keys := make([]string, 0, MaxParallelBatches)
	for lane := range MaxParallelBatches {
		keys = append(keys, laneKey(d.job, id, lane))
	}
	return s.rdb.Del(ctx, keys...).Err()
}

func (s *Service) push(ctx context.Context, a ExecutionArgs) error {
	payload := []any{a.MigrationID, a.Lane, a.Token}
	if a.Database != "" {
		payload = append(payload, a.Database)
	}
	args, _ := json.Marshal(payload)
	// retry: false: a batch's failure is recorded in PostgreSQL, and the
	// lane is re-opened by the scheduler; Sidekiq retries would only
	// duplicate lanes.
	_, err := s.client.Push(ctx, ExecutionWorkerClass, args, sidekiq.PushOptions{Queue: Queue, Retry: sidekiq.NoRetry})
	return err
}

func (s *Service) work(ctx context.Context, job *worker.Job[ExecutionArgs]) error {
	a := job.Args
	d, ok := s.byJob[a.Database]
	if !ok {
		// Pushed by a worker configured with more databases. Its lane
		// expires (laneTTL) and a worker that has the database opens it
		// again; this one cannot run it.
		s.log.Warn("execution job for a database this worker does not have; configure it (databases: or DATABASE_URL_<NAME>) on every worker",
			zap.String("database", a.Database), zap.Int64("migration_id", a.MigrationID))
		return nil
	}
	key := laneKey(d.job, a.MigrationID, a.Lane)
	renewed, err := renewLane.Run(ctx, s.rdb, []string{key}, a.Token, laneTTL.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("bbm: lane %s: %w", key, err)
	}
	if renewed == 0 {
		return nil // a stale copy of a lane that has moved on
	}
	out, err := d.engine.RunBatch(ctx, a.MigrationID)
	switch {
	case err == nil || errors.Is(err, context.Canceled):
	case isConnLoss(err):
		// The lane reopens at a tick once the database answers again.
		d.log.Warn("database unreachable; the migration's batches wait for it", zap.Int64("migration_id", a.MigrationID), zap.Error(err))
	default:
		d.log.Error("batch could not run", zap.Int64("migration_id", a.MigrationID), zap.Error(err))
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
