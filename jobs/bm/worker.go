package bm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgwal"
	"github.com/ferrymigrate/ferry/queue"
	"github.com/ferrymigrate/ferry/worker"
)

// GitLab's names and defaults (gitlab-background-migrations.md §6.2).
const (
	// WorkerClass is the Sidekiq class Rails apps enqueue legacy
	// migrations under.
	WorkerClass = "BackgroundMigrationWorker"
	// QueueName is the queue it uses.
	QueueName = "background_migration"
	// MaxLeaseAttempts is the lease_attempts of a fresh job; a job runs at
	// most MaxLeaseAttempts+1 times before it is given up.
	MaxLeaseAttempts = 5
	// DefaultLeaseTTL is GitLab's minimum_interval: at most one job per
	// migration class (per lease key) starts every 2 minutes.
	DefaultLeaseTTL = 2 * time.Minute
	// DefaultPausedDelay is how far a job is pushed back while legacy
	// migrations are paused (GitLab's BACKGROUND_MIGRATIONS_DELAY).
	DefaultPausedDelay = 4 * time.Hour
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

// Lease is an exclusive lease that is never released, only expires.
type Lease interface {
	// Obtain takes key for ttl if nobody holds it; otherwise it reports
	// how long the current holder keeps it (0 if unknown).
	Obtain(ctx context.Context, key string, ttl time.Duration) (ok bool, remaining time.Duration, err error)
}

// RedisLease is GitLab's ExclusiveLease (SET NX with a TTL) on the same
// key, see [queue.ExclusiveLeaseKey].
type RedisLease struct{ Redis redis.UniversalClient }

// Obtain implements Lease.
func (l RedisLease) Obtain(ctx context.Context, key string, ttl time.Duration) (bool, time.Duration, error) {
	k := queue.ExclusiveLeaseKey(key)
	ok, err := l.Redis.SetNX(ctx, k, queue.NewJID(), ttl).Result()
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

// WorkerConfig configures the BackgroundMigrationWorker job class.
type WorkerConfig struct {
	Runner *Runner               // required
	Client *queue.Client         // required: reschedules are pushed with it
	Redis  redis.UniversalClient // required: pause switch and default lease
	// LeaseTTL defaults to DefaultLeaseTTL, PausedDelay to DefaultPausedDelay.
	LeaseTTL    time.Duration
	PausedDelay time.Duration
	// Lease defaults to RedisLease on Redis.
	Lease Lease
	// Health defaults to ReplicationLagCheck(Runner.DB, 100 MB) when the
	// runner has a database, else to always healthy.
	Health HealthCheck
	Logger *zap.Logger
	// Now is injectable for tests; reschedule times are Now()+delay.
	Now func() time.Time
}

// Worker is the BackgroundMigrationWorker job class (GitLab §6.2): a
// per-migration-class lease, a database health check and a pause switch,
// each rescheduling the job instead of running it, with a bounded number of
// lease attempts.
type Worker struct {
	cfg WorkerConfig
	log *zap.Logger
}

// NewWorker validates cfg.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Runner == nil || cfg.Runner.Registry == nil {
		return nil, errors.New("bm: WorkerConfig.Runner with a Registry is required")
	}
	if cfg.Client == nil || cfg.Redis == nil {
		return nil, errors.New("bm: WorkerConfig.Client and Redis are required")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.PausedDelay <= 0 {
		cfg.PausedDelay = DefaultPausedDelay
	}
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
	return &Worker{cfg: cfg, log: cfg.Logger.Named("bm")}, nil
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
		at, err := w.reschedule(ctx, job, class, w.cfg.PausedDelay, attempts)
		if err != nil {
			return err
		}
		log.Info("skipping execution, migration rescheduled", zap.String("reason", "legacy background migrations are paused (ferry bm pause)"),
			zap.String("paused_by", p.By), zap.Time("run_at", at))
		return nil
	}

	retried := attempts != MaxLeaseAttempts
	attemptsLeft := attempts - 1
	key := WorkerClass + ":" + class
	if retried {
		// A separate key lets rescheduled jobs run beside the regular
		// cadence instead of starving behind it (GitLab MR !68763).
		key += ":retried"
	}
	leased, ttl, err := w.cfg.Lease.Obtain(ctx, key, w.cfg.LeaseTTL)
	if err != nil {
		return fmt.Errorf("bm: lease %s: %w", key, err)
	}
	healthy, why := true, ""
	if leased {
		if healthy, why, err = w.cfg.Health(ctx); err != nil {
			return fmt.Errorf("bm: database health check: %w", err)
		}
	}
	if leased && healthy {
		err := w.cfg.Runner.Perform(ctx, class, a.Args)
		if err != nil && (errors.Is(err, ErrInvalidArgs) || errors.Is(err, ErrInvalidIdentifier)) {
			// No retry can fix bad input: straight to the dead set.
			return killError{err}
		}
		return err
	}
	reason := "could not obtain the exclusive lease for " + key
	if leased {
		reason = "database unhealthy: " + why
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
		delay = w.cfg.LeaseTTL
	}
	at, err := w.reschedule(ctx, job, class, delay, attemptsLeft)
	if err != nil {
		return err
	}
	log.Info("migration rescheduled", zap.String("reason", reason), zap.Time("run_at", at),
		zap.Int("lease_attempts_left", attemptsLeft))
	return nil
}

// reschedule is GitLab's perform_in(delay, class, args, attempts): a new
// job (new jid) in the same queue with the same retry option.
func (w *Worker) reschedule(ctx context.Context, job *worker.Job[WorkerArgs], class string, delay time.Duration, attempts int) (time.Time, error) {
	args, err := workerArgs(class, job.Args.Args, &attempts)
	if err != nil {
		return time.Time{}, killError{err}
	}
	at := w.cfg.Now().Add(delay)
	opts := queue.PushOptions{Queue: job.Queue, At: at}
	if job.Payload != nil && job.Payload.Has("retry") {
		opts.Retry = job.Payload.Get("retry")
	}
	if _, err := w.cfg.Client.Push(ctx, WorkerClass, args, opts); err != nil {
		return at, fmt.Errorf("bm: reschedule %s: %w", class, err)
	}
	return at, nil
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
