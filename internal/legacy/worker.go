package legacy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgwal"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/sleep"
	"github.com/ferrymigrate/ferry/worker"
)

// GitLab's names and defaults (gitlab-background-migrations.md §6.2), and
// ferry's.
const (
	// WorkerClass is the Sidekiq class Rails apps enqueue legacy
	// migrations under.
	WorkerClass = "BackgroundMigrationWorker"
	// QueueName is the queue it uses.
	QueueName = "background_migration"
	// MaxLeaseAttempts is the lease_attempts of a fresh job; with
	// MinInterval set, a job runs at most MaxLeaseAttempts+1 times before
	// it is given up.
	MaxLeaseAttempts = 5
	// DefaultLeaseTTL is GitLab's minimum_interval: at most one job per
	// migration class (per lease key) starts every 2 minutes. It is what
	// `bm.min_interval: 2m` restores.
	DefaultLeaseTTL = 2 * time.Minute
	// DefaultPausedDelay is how far a job is pushed back while legacy
	// migrations are paused (GitLab's BACKGROUND_MIGRATIONS_DELAY).
	DefaultPausedDelay = 4 * time.Hour
	// DefaultConcurrency is how many jobs of one migration class run at
	// once across the cluster: GitLab's migrations assume one.
	DefaultConcurrency = 1
	// DefaultMaxRunning is how many legacy jobs run at once across the
	// cluster, all classes together.
	DefaultMaxRunning = 4
	// DefaultLeaseWait is how long a job waits for its class's running
	// slot before it goes back to its queue (as Sidekiq Enterprise's concurrent
	// limiter waits 5 s).
	DefaultLeaseWait = 5 * time.Second
	// DefaultHealthDelay is how far a job is pushed back while the
	// database is unhealthy.
	DefaultHealthDelay = 30 * time.Second
	// DefaultSlotTTL is how long a running slot outlives its last refresh,
	// i.e. how soon the slot of a killed worker frees itself.
	DefaultSlotTTL = 30 * time.Second
	// healthCacheTTL spares the database a health query per job: at
	// thousands of jobs a second, the check would be most of the load.
	healthCacheTTL = time.Second
)

// WorkerArgs are BackgroundMigrationWorker's Sidekiq args:
// [MigrationClassName, [args...], lease_attempts?].
type WorkerArgs struct {
	Class         string
	Args          json.RawMessage `sidekiq:",optional"`
	LeaseAttempts *int            `sidekiq:",optional"`
}

// Kind is the Sidekiq class.
func (WorkerArgs) Kind() string { return WorkerClass }

// BadArgsAreFatal sends a job whose args are not [class, [args...],
// lease_attempts?] straight to the dead set ([worker.FatalArgs]), as Work
// does with a migration's own bad arguments: no retry can fix them.
func (WorkerArgs) BadArgsAreFatal() {}

// Lease is an exclusive lease that is never released, only expires
// (GitLab's, used with WorkerConfig.MinInterval).
type Lease interface {
	// Obtain takes key for ttl if nobody holds it; otherwise it reports
	// how long the current holder keeps it (0 if unknown).
	Obtain(ctx context.Context, key string, ttl time.Duration) (ok bool, remaining time.Duration, err error)
}

// RedisLease is GitLab's ExclusiveLease (SET NX with a TTL) on the same
// key, see [sidekiq.ExclusiveLeaseKey].
type RedisLease struct{ Redis redis.UniversalClient }

// Obtain implements Lease.
func (l RedisLease) Obtain(ctx context.Context, key string, ttl time.Duration) (bool, time.Duration, error) {
	k := sidekiq.ExclusiveLeaseKey(key)
	ok, err := l.Redis.SetNX(ctx, k, sidekiq.NewJID(), ttl).Result()
	if err != nil || ok {
		return ok, 0, err
	}
	rem, err := l.Redis.PTTL(ctx, k).Result()
	if err != nil || rem < 0 {
		return false, 0, err
	}
	return false, rem, nil
}

// HealthCheck reports whether the database can take migration load now.
// The reason is logged when it cannot.
type HealthCheck func(ctx context.Context) (healthy bool, reason string, err error)

// Pacer paces legacy jobs while the database serves others: Wait is how
// long to wait before a job may start; Done reports the time a job took
// and returns the pause to keep after it (holding its running slot, so
// its class's next job waits too) and why.
type Pacer interface {
	Wait(ctx context.Context) (time.Duration, error)
	Done(ctx context.Context, work time.Duration) (pause time.Duration, reason string, err error)
}

// WorkerConfig configures the BackgroundMigrationWorker job class.
type WorkerConfig struct {
	Runner *Runner               // required
	Client *sidekiq.Client       // required: reschedules are pushed with it
	Redis  redis.UniversalClient // required: pause switch and running slots
	// Concurrency is how many jobs of one migration class run at once
	// across the cluster (default DefaultConcurrency); MaxRunning how many
	// legacy jobs of all classes (default DefaultMaxRunning). Every worker
	// should be given the same values: each enforces its own.
	Concurrency, MaxRunning int
	// LeaseWait is how long a job waits for a running slot before it goes
	// back to the end of its queue (default DefaultLeaseWait).
	LeaseWait time.Duration
	// SlotTTL defaults to DefaultSlotTTL; a running job refreshes its slot
	// every third of it.
	SlotTTL time.Duration
	// MinInterval > 0 restores GitLab's behaviour instead: a per-class
	// lease that is never released and lapses after MinInterval (GitLab:
	// 2 minutes), lease misses and unhealthy checks rescheduled with one
	// lease attempt less, and jobs given up once they have none left.
	MinInterval time.Duration
	// PausedDelay defaults to DefaultPausedDelay, HealthDelay to
	// DefaultHealthDelay (unused with MinInterval: GitLab waits the lease).
	PausedDelay, HealthDelay time.Duration
	// Lease defaults to RedisLease on Redis (MinInterval only).
	Lease Lease
	// Health defaults to ReplicationLagCheck(Runner.DB, 100 MB) and
	// WALArchiveCheck when the runner has a database, else to always
	// healthy. Its verdict is reused for a second.
	Health HealthCheck
	// Pacer, if set, spreads jobs out while other sessions use the
	// database, on the pacing clock batched migrations share (a
	// batched.SharedPace). Not used with MinInterval.
	Pacer  Pacer
	Logger *zap.Logger
	// Now is injectable for tests; reschedule times are Now()+delay.
	Now func() time.Time
}

// ErrInvalidWorkerConfig wraps the errors of a WorkerConfig that cannot work.
var ErrInvalidWorkerConfig = errors.New("bm: invalid worker configuration")

// Worker is the BackgroundMigrationWorker job class. A job's arguments are
// checked first (a bad job fails at once), then it runs as soon as its
// class has a free running slot (held while it runs, released when it
// ends) and the database is healthy; otherwise it is rescheduled, never
// dropped. With MinInterval it follows GitLab §6.2 instead. A pause switch
// reschedules every job by 4 hours.
type Worker struct {
	cfg    WorkerConfig
	log    *zap.Logger
	gates  localGates
	health healthCache
}

// NewWorker validates cfg.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Runner == nil || cfg.Runner.Registry == nil {
		return nil, fmt.Errorf("%w: Runner with a Registry is required", ErrInvalidWorkerConfig)
	}
	if cfg.Client == nil || cfg.Redis == nil {
		return nil, fmt.Errorf("%w: Client and Redis are required", ErrInvalidWorkerConfig)
	}
	if cfg.Concurrency < 0 || cfg.MaxRunning < 0 || cfg.MinInterval < 0 || cfg.LeaseWait < 0 {
		return nil, fmt.Errorf("%w: Concurrency, MaxRunning, MinInterval and LeaseWait must not be negative", ErrInvalidWorkerConfig)
	}
	cfg.Concurrency = cmp.Or(cfg.Concurrency, DefaultConcurrency)
	cfg.MaxRunning = cmp.Or(cfg.MaxRunning, DefaultMaxRunning)
	cfg.LeaseWait = cmp.Or(cfg.LeaseWait, DefaultLeaseWait)
	cfg.SlotTTL = cmp.Or(cfg.SlotTTL, DefaultSlotTTL)
	cfg.PausedDelay = cmp.Or(cfg.PausedDelay, DefaultPausedDelay)
	cfg.HealthDelay = cmp.Or(cfg.HealthDelay, DefaultHealthDelay)
	if cfg.Lease == nil {
		cfg.Lease = RedisLease{Redis: cfg.Redis}
	}
	if cfg.Health == nil {
		if cfg.Runner.DB != nil {
			cfg.Health = AllHealthy(ReplicationLagCheck(cfg.Runner.DB, DefaultMaxReplicationLag),
				WALArchiveCheck(cfg.Runner.DB, pgwal.DefaultMaxPending))
		} else {
			cfg.Health = func(context.Context) (bool, string, error) { return true, "", nil }
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.Named("bm")}
	w.health.check, w.health.now = cfg.Health, cfg.Now
	return w, nil
}

// AddWorker registers BackgroundMigrationWorker in reg.
func AddWorker(reg *worker.Registry, cfg WorkerConfig) error {
	w, err := NewWorker(cfg)
	if err != nil {
		return err
	}
	return worker.AddWorkerSafely[WorkerArgs](reg, w)
}

// Work runs one BackgroundMigrationWorker job.
func (w *Worker) Work(ctx context.Context, job *worker.Job[WorkerArgs]) error {
	a := job.Args
	class := normalizeClass(a.Class)
	attempts := MaxLeaseAttempts
	if a.LeaseAttempts != nil {
		attempts = *a.LeaseAttempts
	}
	log := w.log.With(zap.String("migration", class), zap.String("jid", job.JID), zap.Int("lease_attempts", attempts))

	if p, err := PauseStatus(ctx, w.cfg.Redis); err != nil {
		return fmt.Errorf("bm: read pause switch: %w", err)
	} else if p != nil {
		at, err := w.reschedule(ctx, job, class, w.cfg.PausedDelay, a.LeaseAttempts)
		if err != nil {
			return err
		}
		log.Info("skipping execution, migration rescheduled", zap.String("reason", "legacy background migrations are paused (ferry bm pause)"),
			zap.String("paused_by", p.By), zap.Time("run_at", at))
		return nil
	}
	// Before any lease: a job no retry can fix fails now, not after
	// waiting its turn (or, with GitLab's lease, being rescheduled).
	prep, err := w.cfg.Runner.Prepare(ctx, class, a.Args)
	if err != nil {
		return failure(err)
	}
	if w.cfg.MinInterval > 0 {
		return w.workGitLab(ctx, job, class, attempts, prep, log)
	}
	return w.workPaced(ctx, job, class, prep, log)
}

// failure sends bad input straight to the dead set; other errors take
// Sidekiq's retry path (an unknown class may be deployed later).
func failure(err error) error {
	if errors.Is(err, ErrInvalidArgs) || errors.Is(err, ErrInvalidIdentifier) {
		return killError{err}
	}
	return err
}

// workPaced runs the job once its class has a free running slot and the
// database is healthy, else reschedules it with its lease attempts
// unchanged: waiting is not failing, so nothing is ever given up.
func (w *Worker) workPaced(ctx context.Context, job *worker.Job[WorkerArgs], class string, prep *Prepared, log *zap.Logger) error {
	if healthy, why, err := w.health.get(ctx); err != nil {
		return fmt.Errorf("bm: database health check: %w", err)
	} else if !healthy {
		w.noteThrottled(ctx, "database unhealthy: "+why)
		return w.deferJob(ctx, job, class, w.cfg.HealthDelay, "database unhealthy: "+why, log)
	}
	slot, why, err := w.acquire(ctx, class)
	if err != nil {
		return err
	}
	if slot == nil {
		// Back at the end of its queue, not into the scheduled set: it
		// comes round again as soon as the jobs ahead of it have, without
		// waiting for the poller.
		return w.deferJob(ctx, job, class, 0, why, log)
	}
	defer w.release(ctx, class, slot)
	if err := w.paceBefore(ctx, log); err != nil {
		return err // shutting down before the job started: it goes back
	}
	start := time.Now()
	err = w.runHolding(ctx, slot, prep, log)
	if err == nil {
		_ = w.paceAfter(ctx, time.Since(start), log) // cut short by a shutdown: nothing lost
	}
	return failure(err)
}

// paceBefore waits for this process's turn on the shared pacing clock.
func (w *Worker) paceBefore(ctx context.Context, log *zap.Logger) error {
	if w.cfg.Pacer == nil {
		return nil
	}
	wait, err := w.cfg.Pacer.Wait(ctx)
	if err != nil {
		// Pacing is politeness, not safety: a job is not failed for it.
		log.Debug("pacing clock unavailable", zap.Error(err))
		return nil
	}
	return pauseFor(ctx, wait)
}

// paceAfter keeps the pause the shared pacing asks for after a job that
// took work, and says why while it does.
func (w *Worker) paceAfter(ctx context.Context, work time.Duration, log *zap.Logger) error {
	if w.cfg.Pacer == nil {
		return nil
	}
	pause, why, err := w.cfg.Pacer.Done(ctx, work)
	if err != nil {
		log.Debug("pacing clock unavailable", zap.Error(err))
		return nil
	}
	if pause <= 0 {
		return nil
	}
	w.noteThrottled(ctx, "paced: "+why)
	return pauseFor(ctx, pause)
}

// pauseFor waits d (nothing when d <= 0) or until ctx ends.
func pauseFor(ctx context.Context, d time.Duration) error {
	if d > 0 && !sleep.For(ctx, d) {
		return ctx.Err()
	}
	return nil
}

func (w *Worker) deferJob(ctx context.Context, job *worker.Job[WorkerArgs], class string, delay time.Duration, reason string, log *zap.Logger) error {
	at, err := w.reschedule(ctx, job, class, delay, job.Args.LeaseAttempts)
	if err != nil {
		return err
	}
	log.Info("migration rescheduled", zap.String("reason", reason), zap.Time("run_at", at))
	return nil
}

// workGitLab is GitLab's BackgroundMigrationWorker#perform (§6.2).
func (w *Worker) workGitLab(ctx context.Context, job *worker.Job[WorkerArgs], class string, attempts int, prep *Prepared, log *zap.Logger) error {
	retried := attempts != MaxLeaseAttempts
	attemptsLeft := attempts - 1
	key := WorkerClass + ":" + class
	if retried {
		// A separate key lets rescheduled jobs run beside the regular
		// cadence instead of starving behind it (GitLab MR !68763).
		key += ":retried"
	}
	leased, ttl, err := w.cfg.Lease.Obtain(ctx, key, w.cfg.MinInterval)
	if err != nil {
		return fmt.Errorf("bm: lease %s: %w", key, err)
	}
	healthy, why := true, ""
	if leased {
		if healthy, why, err = w.health.get(ctx); err != nil {
			return fmt.Errorf("bm: database health check: %w", err)
		}
	}
	if leased && healthy {
		return failure(prep.Run(ctx))
	}
	reason := "could not obtain the exclusive lease for " + key
	if leased {
		reason = "database unhealthy: " + why
		w.noteThrottled(ctx, reason)
	}
	if attemptsLeft < 0 {
		msg := "Job could not get an exclusive lease after several tries. Giving up."
		if leased {
			msg = "Database was unhealthy after several tries. Giving up."
		}
		log.Warn(msg, zap.String("reason", reason))
		return nil
	}
	delay := ttl
	if delay <= 0 {
		delay = w.cfg.MinInterval
	}
	at, err := w.reschedule(ctx, job, class, delay, &attemptsLeft)
	if err != nil {
		return err
	}
	log.Info("migration rescheduled", zap.String("reason", reason), zap.Time("run_at", at),
		zap.Int("lease_attempts_left", attemptsLeft))
	return nil
}

// reschedule is GitLab's perform_in(delay, class, args, attempts): a new
// job (new jid) in the same queue with the same retry option; nil
// attempts keeps the args without lease_attempts; delay 0 pushes it to
// the queue at once.
func (w *Worker) reschedule(ctx context.Context, job *worker.Job[WorkerArgs], class string, delay time.Duration, attempts *int) (time.Time, error) {
	args, err := workerArgs(class, job.Args.Args, attempts)
	if err != nil {
		return time.Time{}, killError{err}
	}
	at := w.cfg.Now().Add(delay)
	opts := sidekiq.PushOptions{Queue: job.Queue}
	if delay > 0 {
		opts.At = at
	}
	if job.Payload != nil && job.Payload.Has("retry") {
		opts.Retry = job.Payload.Get("retry")
	}
	if _, err := w.cfg.Client.Push(ctx, WorkerClass, args, opts); err != nil {
		return at, fmt.Errorf("bm: reschedule %s: %w", class, err)
	}
	return at, nil
}

// noteThrottled records why legacy migrations are held back, for `ferry
// bm remaining`; best effort, the log has it too.
func (w *Worker) noteThrottled(ctx context.Context, why string) {
	b, _ := json.Marshal(ThrottleInfo{Reason: why, At: w.cfg.Now().UTC()})
	_ = w.cfg.Redis.Set(ctx, sidekiq.BMThrottledKey, b, 2*max(w.cfg.HealthDelay, w.cfg.MinInterval)).Err()
}

// ThrottleInfo is why legacy migrations were last held back.
type ThrottleInfo struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Throttled returns the last throttle reason still current, or nil.
func Throttled(ctx context.Context, rdb redis.UniversalClient) (*ThrottleInfo, error) {
	b, err := rdb.Get(ctx, sidekiq.BMThrottledKey).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bm: throttle state: %w", err)
	}
	var ti ThrottleInfo
	if err := json.Unmarshal(b, &ti); err != nil {
		return nil, nil // not ours to judge; nothing to show
	}
	return &ti, nil
}

// killError fails a job straight into the dead set, keeping its message.
type killError struct{ err error }

func (e killError) Error() string   { return e.err.Error() }
func (e killError) Unwrap() []error { return []error{worker.ErrKill, e.err} }

// DefaultMaxReplicationLag is GitLab's limit for the legacy health check.
const DefaultMaxReplicationLag = 100 << 20

// ReplicationLagCheck is GitLab's healthy_database? (§5.3): unhealthy when
// at least one replication slot lags maxBytes or more behind the current WAL
// insert position and at most one slot is within the limit. No slots (or a
// server without them) counts as healthy.
func ReplicationLagCheck(db DB, maxBytes int64) HealthCheck {
	return func(ctx context.Context) (bool, string, error) {
		var slots, tooGreat int64
		err := db.QueryRow(ctx, `
			SELECT count(*), count(*) FILTER (
				WHERE pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn) >= $1)
			FROM pg_replication_slots`, maxBytes).Scan(&slots, &tooGreat)
		if err != nil {
			return false, "", fmt.Errorf("replication lag: %w", err)
		}
		if tooGreat > 0 && slots-tooGreat <= 1 {
			return false, fmt.Sprintf("%d of %d replication slots lag %d bytes or more", tooGreat, slots, maxBytes), nil
		}
		return true, "", nil
	}
}

// WALArchiveCheck is unhealthy while more than maxSegments WAL segments
// wait for archival (GitLab's WriteAheadLog indicator; see pgwal).
func WALArchiveCheck(db DB, maxSegments int64) HealthCheck {
	return func(ctx context.Context) (bool, string, error) {
		n, ok, err := pgwal.PendingSegments(ctx, db, pgwal.Archiver)
		if err != nil {
			return false, "", fmt.Errorf("WAL archiving: %w", err)
		}
		if ok && n > maxSegments {
			return false, fmt.Sprintf("%d WAL segments wait for archiving (more than %d)", n, maxSegments), nil
		}
		return true, "", nil
	}
}

// AllHealthy is healthy when every check is, in order; the first that is
// not gives the reason.
func AllHealthy(checks ...HealthCheck) HealthCheck {
	return func(ctx context.Context) (bool, string, error) {
		for _, c := range checks {
			if ok, why, err := c(ctx); err != nil || !ok {
				return ok, why, err
			}
		}
		return true, "", nil
	}
}
