package bm

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/queue"
	"github.com/ferrymigrate/ferry/worker"
)

// Coordinator is GitLab's JobCoordinator (§6.3): it counts, steals and
// performs legacy migrations outside the worker, for operators draining a
// queue before an upgrade.
type Coordinator struct {
	Redis  redis.UniversalClient
	Runner *Runner
	// Queue defaults to QueueName.
	Queue  string
	Logger *zap.Logger
}

func (c *Coordinator) queue() string {
	if c.Queue == "" {
		return QueueName
	}
	return c.Queue
}

func (c *Coordinator) log() *zap.Logger {
	if c.Logger == nil {
		return zap.NewNop()
	}
	return c.Logger
}

// Remaining counts BackgroundMigrationWorker jobs per migration class in
// the queue and the scheduled set (what GitLab's remaining counts, see
// JobCounts.Remaining); retryDead also fills the retry and dead counts.
func (c *Coordinator) Remaining(ctx context.Context, retryDead bool) (map[string]*queue.JobCounts, error) {
	return queue.CountByArg0(ctx, c.Redis, WorkerClass, c.queue(), retryDead)
}

// StealOptions configure [Coordinator.Steal].
type StealOptions struct {
	// RetryDead also steals from the retry and dead sets.
	RetryDead bool
	Progress  func(queue.StealProgress)
	// Chunk bounds the work of one Redis script call (default 1000).
	Chunk int
}

// Steal takes every queued and scheduled job of migration class out of
// Redis and performs it here; each job is performed only by the process
// that removed it. On the first failure that job and the rest are put back
// where they came from and a *queue.StealError is returned.
func (c *Coordinator) Steal(ctx context.Context, class string, opts StealOptions) (queue.StealResult, error) {
	perform := func(ctx context.Context, sj *queue.StolenJob) error {
		var wa WorkerArgs
		if err := worker.DecodeArgs(sj.Job.Args(), &wa); err != nil {
			return &ArgsError{Class: WorkerClass, Err: err}
		}
		return c.Runner.Perform(ctx, wa.Class, wa.Args)
	}
	return queue.Steal(ctx, c.Redis, queue.StealOptions{
		Class: WorkerClass, Arg0: class, Queue: c.queue(), RetryDead: opts.RetryDead,
		Chunk: opts.Chunk, Progress: opts.Progress, Logger: c.log(),
	}, perform)
}

// PerformPending performs the pending tracking rows of class ("" = all),
// oldest first, and stops at the first failure. A success marks the row
// succeeded (unless the runner has NoAutoTrack and the migration does not
// mark it itself). It returns how many it performed.
func (c *Coordinator) PerformPending(ctx context.Context, class string, each func(TrackedJob)) (int, error) {
	if c.Runner.DB == nil {
		return 0, ErrNoDatabase
	}
	jobs, err := PendingJobs(ctx, c.Runner.DB, class)
	if err != nil {
		return 0, err
	}
	for i, j := range jobs {
		if err := c.Runner.Perform(ctx, j.Class, j.Arguments); err != nil {
			return i, fmt.Errorf("tracking row %d (%s %s): %w", j.ID, j.Class, j.Arguments, err)
		}
		if each != nil {
			each(j)
		}
	}
	return len(jobs), nil
}

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
		xs, err := rdb.LRange(ctx, queue.QueueKey(q), -waitingPeek, -1).Result()
		if err != nil {
			return out, fmt.Errorf("bm: peek at queue %s: %w", q, err)
		}
		for _, x := range xs {
			if j, err := queue.ParseJob([]byte(x)); err == nil && j.Class() == WorkerClass {
				out[q]++
			}
		}
	}
	return out, nil
}
