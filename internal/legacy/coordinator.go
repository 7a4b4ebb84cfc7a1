package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/worker"
)

// Coordinator is GitLab's JobCoordinator (§6.3): it counts, steals and
// performs legacy migrations outside the worker, for operators draining a
// queue before an upgrade.
type Coordinator struct {
	Redis  redis.UniversalClient
	Runner *Runner
	// Queues are where BackgroundMigrationWorker jobs are looked for;
	// default DefaultQueues.
	Queues []string
	Logger *zap.Logger
}

func (c *Coordinator) queues() []string {
	if len(c.Queues) == 0 {
		return DefaultQueues
	}
	return c.Queues
}

func (c *Coordinator) log() *zap.Logger {
	if c.Logger == nil {
		return zap.NewNop()
	}
	return c.Logger
}

// Remaining counts BackgroundMigrationWorker jobs per migration class in
// the queues and the scheduled set (what GitLab's remaining counts, see
// JobCounts.Remaining); retryDead also fills the retry and dead counts.
func (c *Coordinator) Remaining(ctx context.Context, retryDead bool) (map[string]*sidekiq.JobCounts, error) {
	return sidekiq.CountByArg0Queues(ctx, c.Redis, WorkerClass, c.queues(), retryDead)
}

// StealOptions configure [Coordinator.Steal].
type StealOptions struct {
	// RetryDead also steals from the retry and dead sets.
	RetryDead bool
	Progress  func(sidekiq.StealProgress)
	// Chunk bounds the work of one Redis script call (default 1000).
	Chunk int
	// Concurrency is how many jobs are performed at once (default 1);
	// KeepGoing puts failing jobs back and goes on (see sidekiq.StealOptions).
	Concurrency int
	KeepGoing   bool
}

// Steal takes every queued and scheduled job of migration class out of
// Redis and performs it here, in GitLab's order (scheduled set, then the
// queues); each job is performed only
// by the process that removed it. On the first failure that job and the
// rest not performed are put back where they came from and a
// *sidekiq.StealError is returned; with KeepGoing only the failing jobs are,
// and a *sidekiq.StealFailures is returned at the end.
func (c *Coordinator) Steal(ctx context.Context, class string, opts StealOptions) (sidekiq.StealResult, error) {
	// A class this process cannot perform is refused before anything is
	// taken out of Redis (its jobs would only be pushed back).
	if reg := c.Runner.Registry; reg != nil && !reg.Has(class) {
		return sidekiq.StealResult{}, &UnknownMigrationError{Class: class, Known: reg.Classes()}
	}
	runners := &stealRunners{co: c, class: class}
	perform := func(ctx context.Context, sj *sidekiq.StolenJob) error {
		var wa WorkerArgs
		if err := worker.DecodeArgs(sj.Job.Args(), &wa); err != nil {
			return &ArgsError{Class: WorkerClass, Err: err}
		}
		r, err := runners.forSource(ctx, sj.Source)
		if err != nil {
			return err
		}
		return r.Perform(ctx, wa.Class, wa.Args)
	}
	// Runs of jobs are performed together when the class allows it (see
	// BatchMigration); one source's jobs at a time, so one runner.
	performBatch := func(ctx context.Context, sjs []*sidekiq.StolenJob) error {
		args := make([]json.RawMessage, len(sjs))
		for i, sj := range sjs {
			var wa WorkerArgs
			if err := worker.DecodeArgs(sj.Job.Args(), &wa); err != nil {
				return err
			}
			if normalizeClass(wa.Class) != normalizeClass(class) {
				return ErrNotBatchable
			}
			args[i] = wa.Args
		}
		r, err := runners.forSource(ctx, sjs[0].Source)
		if err != nil {
			return err
		}
		return r.PerformBatch(ctx, class, args)
	}
	return sidekiq.Steal(ctx, c.Redis, sidekiq.StealOptions{
		Class: WorkerClass, Arg0: class, Queues: c.queues(), RetryDead: opts.RetryDead,
		Chunk: opts.Chunk, Progress: opts.Progress, Logger: c.log(),
		Concurrency: opts.Concurrency, KeepGoing: opts.KeepGoing, PerformBatch: performBatch,
	}, perform)
}

// stealRunners spares a steal the tracking-table UPDATE per job when the
// class has no pending tracking row: rows are inserted before their jobs
// are enqueued (GitLab's helpers, Schedule), so when none is pending once
// a source's jobs are all in the steal's hands, none of those jobs has
// one. It is asked again for each source, whose jobs are taken later.
type stealRunners struct {
	co    *Coordinator
	class string

	mu    sync.Mutex
	bySrc map[sidekiq.StealSource]*Runner
}

func (s *stealRunners) forSource(ctx context.Context, src sidekiq.StealSource) (*Runner, error) {
	r := s.co.Runner
	if r.DB == nil || r.NoAutoTrack {
		return r, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if got := s.bySrc[src]; got != nil {
		return got, nil
	}
	pending, err := HasPending(ctx, r.DB, s.class)
	if err != nil {
		return nil, err
	}
	got := r
	if !pending {
		got = &Runner{Registry: r.Registry, DB: r.DB, Logger: r.Logger, NoAutoTrack: true, Tables: r.tables()}
	}
	if s.bySrc == nil {
		s.bySrc = map[sidekiq.StealSource]*Runner{}
	}
	s.bySrc[src] = got
	return got, nil
}

// PerformPending performs the pending tracking rows of class ("" = all),
// oldest first, and stops at the first failure. A success marks the row
// succeeded (unless the runner has NoAutoTrack and the migration does not
// mark it itself). It returns how many it performed. With class "", rows
// of classes the registry does not have are left alone and reported at
// the end with an *UnknownClassesError.
func (c *Coordinator) PerformPending(ctx context.Context, class string, each func(j TrackedJob, done, total int)) (int, error) {
	if c.Runner.DB == nil {
		return 0, ErrNoDatabase
	}
	if class != "" && !c.Runner.Registry.Has(class) {
		// Told as such, rather than as a failure of its first row.
		return 0, &UnknownMigrationError{Class: class, Known: c.Runner.Registry.Classes()}
	}
	jobs, err := PendingJobs(ctx, c.Runner.DB, class)
	if err != nil {
		return 0, err
	}
	var unknown []TrackedJob
	if class == "" {
		jobs, unknown = SplitKnown(jobs, c.Runner.Registry)
	}
	for i, j := range jobs {
		if err := c.Runner.Perform(ctx, j.Class, j.Arguments); err != nil {
			return i, &TrackedJobError{Job: j, Err: err}
		}
		if each != nil {
			each(j, i+1, len(jobs))
		}
	}
	if len(unknown) > 0 {
		return len(jobs), &UnknownClassesError{Jobs: unknown}
	}
	return len(jobs), nil
}

// SplitKnown splits tracking rows into those of classes reg has and the
// others, keeping their order.
func SplitKnown(jobs []TrackedJob, reg *Registry) (known, unknown []TrackedJob) {
	for _, j := range jobs {
		if reg.Has(j.Class) {
			known = append(known, j)
		} else {
			unknown = append(unknown, j)
		}
	}
	return known, unknown
}

// UnknownClassesError reports pending tracking rows of classes ferry does
// not have: an operator runs them elsewhere and then marks them.
type UnknownClassesError struct{ Jobs []TrackedJob }

func (e *UnknownClassesError) Error() string {
	classes := map[string]int{}
	for _, j := range e.Jobs {
		classes[j.Class]++
	}
	parts := make([]string, 0, len(classes))
	for _, c := range slices.Sorted(maps.Keys(classes)) {
		parts = append(parts, fmt.Sprintf("%s (%d)", c, classes[c]))
	}
	return fmt.Sprintf("%d pending tracking rows are of classes this ferry does not have: %s; "+
		"run them elsewhere, then `ferry bm mark CLASS --yes` (or --skip)", len(e.Jobs), strings.Join(parts, ", "))
}

// Is matches ErrUnknownMigration.
func (e *UnknownClassesError) Is(target error) bool { return target == ErrUnknownMigration }

// FinalizeResult counts what Finalize did.
type FinalizeResult struct {
	Stolen, PendingPerformed, StolenAgain int
	DeletedTracking                       int64
}

// Finalize is GitLab's finalize_background_migration: steal, perform the
// pending tracking rows, steal again (jobs scheduled meanwhile), then,
// with deleteSucceeded, delete the class's succeeded tracking rows.
func (c *Coordinator) Finalize(ctx context.Context, class string, opts StealOptions, deleteSucceeded bool) (FinalizeResult, error) {
	var res FinalizeResult
	r, err := c.Steal(ctx, class, opts)
	res.Stolen = r.Performed
	if err != nil {
		return res, err
	}
	if c.Runner.DB != nil {
		res.PendingPerformed, err = c.PerformPending(ctx, class, nil)
		if err != nil {
			return res, err
		}
	} else {
		c.log().Warn("no database configured: skipping the pending tracking rows")
	}
	r, err = c.Steal(ctx, class, opts)
	res.StolenAgain = r.Performed
	if err != nil {
		return res, err
	}
	if deleteSucceeded && c.Runner.DB != nil {
		res.DeletedTracking, err = DeleteTracked(ctx, c.Runner.DB, class, StatusSucceeded)
		if err != nil && !errors.Is(err, context.Canceled) {
			return res, err
		}
	}
	return res, err
}

// DefaultQueues are where `ferry bm remaining`, `steal` and `pending` look
// for BackgroundMigrationWorker jobs: the worker's own queue, and
// `default`, where GitLab 16+ routes every job unless routing rules say
// otherwise.
var DefaultQueues = []string{QueueName, "default"}

// waitingPeek bounds the look into each queue at a worker's start.
const waitingPeek = 1000

// Waiting counts the BackgroundMigrationWorker jobs among the next 1,000
// jobs of each queue: enough to tell that some wait there, cheap enough
// for every worker start.
func Waiting(ctx context.Context, rdb redis.UniversalClient, queues []string) (map[string]int, error) {
	out := map[string]int{}
	for _, q := range queues {
		xs, err := rdb.LRange(ctx, sidekiq.QueueKey(q), -waitingPeek, -1).Result()
		if err != nil {
			return out, fmt.Errorf("bm: peek at queue %s: %w", q, err)
		}
		for _, x := range xs {
			if j, err := sidekiq.ParseJob([]byte(x)); err == nil && j.Class() == WorkerClass {
				out[q]++
			}
		}
	}
	return out, nil
}
