package legacy

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Status is background_migration_jobs.status (GitLab's codes).
type Status int16

// Tracking statuses.
const (
	StatusPending   Status = 0
	StatusSucceeded Status = 1
)

func (s Status) String() string {
	switch s {
	case StatusPending:
		return "pending"
	case StatusSucceeded:
		return "succeeded"
	}
	return fmt.Sprintf("status(%d)", int16(s))
}

// TrackedJob is one row of background_migration_jobs.
type TrackedJob struct {
	ID        int64           `json:"id"`
	Class     string          `json:"class_name"`
	Arguments json.RawMessage `json:"arguments"`
	Status    Status          `json:"status"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Track records pending rows for jobs about to be scheduled (GitLab's
// track_jobs: true). Each args is the migration's JSON argument array.
func Track(ctx context.Context, db DB, class string, args ...json.RawMessage) error {
	class = normalizeClass(class)
	if len(args) == 0 {
		return nil
	}
	texts := make([]string, len(args))
	for i, a := range args {
		if !json.Valid(a) {
			return &ArgsError{Class: class, Err: fmt.Errorf("tracking arguments %d are not valid JSON", i+1)}
		}
		texts[i] = string(a)
	}
	// One statement whatever the count: unnest keeps it a single round trip.
	_, err := db.Exec(ctx, `
		INSERT INTO background_migration_jobs (class_name, arguments, status, created_at, updated_at)
		SELECT $1, a::jsonb, 0, now(), now() FROM unnest($2::text[]) AS a`, class, texts)
	if err != nil {
		return fmt.Errorf("bm: track %s jobs: %w", class, err)
	}
	return nil
}

// MarkSucceeded is GitLab's BackgroundMigrationJob.mark_all_as_succeeded:
// pending rows of class whose arguments equal args (as jsonb) become
// succeeded. It returns how many rows changed.
func MarkSucceeded(ctx context.Context, db DB, class string, args json.RawMessage) (int64, error) {
	tag, err := db.Exec(ctx, `
		UPDATE background_migration_jobs SET status = 1, updated_at = now()
		WHERE status = 0 AND class_name = $1 AND arguments = $2::jsonb`, normalizeClass(class), string(args))
	if err != nil {
		return 0, fmt.Errorf("bm: mark %s succeeded: %w", class, err)
	}
	return tag.RowsAffected(), nil
}

// markSucceededMany is MarkSucceeded for several jobs of class inside tx,
// where a missing tracking table must not abort the transaction.
func markSucceededMany(ctx context.Context, tx pgx.Tx, class string, args []json.RawMessage) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('background_migration_jobs') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("bm: tracking table: %w", err)
	}
	if !exists {
		return nil
	}
	texts := make([]string, len(args))
	for i, a := range args {
		texts[i] = string(a)
	}
	_, err := tx.Exec(ctx, `
		UPDATE background_migration_jobs SET status = 1, updated_at = now()
		WHERE status = 0 AND class_name = $1 AND arguments = ANY ($2::jsonb[])`, class, texts)
	if err != nil {
		return fmt.Errorf("bm: mark %s succeeded: %w", class, err)
	}
	return nil
}

// HasPending reports whether class has a pending tracking row (false
// when the tracking table does not exist).
func HasPending(ctx context.Context, db DB, class string) (bool, error) {
	var ok bool
	err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM background_migration_jobs WHERE class_name = $1 AND status = 0)`,
		normalizeClass(class)).Scan(&ok)
	if err != nil && !isUndefinedTable(err) {
		return false, fmt.Errorf("bm: pending tracking rows: %w", err)
	}
	return ok, nil
}

// PendingJobs lists pending rows, oldest first; class "" means all classes.
func PendingJobs(ctx context.Context, db DB, class string) ([]TrackedJob, error) {
	rows, err := db.Query(ctx, `
		SELECT id, class_name, arguments::text, status, created_at, updated_at
		FROM background_migration_jobs
		WHERE status = 0 AND ($1 = '' OR class_name = $1)
		ORDER BY id`, normalizeClass(class))
	if err != nil {
		return nil, fmt.Errorf("bm: pending jobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TrackedJob, error) {
		var j TrackedJob
		var args string
		err := r.Scan(&j.ID, &j.Class, &args, &j.Status, &j.CreatedAt, &j.UpdatedAt)
		j.Arguments = json.RawMessage(args)
		return j, err
	})
	if err != nil {
		return nil, fmt.Errorf("bm: pending jobs: %w", err)
	}
	return out, nil
}

// DeleteTracked deletes class's rows with status, in batches of 1,000 so
// a large table is never locked for long (GitLab's finalize step 4).
func DeleteTracked(ctx context.Context, db DB, class string, status Status) (int64, error) {
	var total int64
	for {
		tag, err := db.Exec(ctx, `
			DELETE FROM background_migration_jobs WHERE id IN (
				SELECT id FROM background_migration_jobs WHERE class_name = $1 AND status = $2 LIMIT 1000)`,
			normalizeClass(class), int16(status))
		if err != nil {
			return total, fmt.Errorf("bm: delete tracking rows: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 1000 {
			return total, nil
		}
	}
}

// ScheduleOptions configure [Schedule].
type ScheduleOptions struct {
	// Queue defaults to "background_migration".
	Queue string
	// Delay is when the first job runs; with Interval > 0 job i (from 1)
	// runs at Delay + i·Interval, as GitLab's
	// queue_background_migration_jobs_by_range_at_intervals does. Both zero
	// enqueues all jobs at once (bulk_queue_background_migration_jobs_by_range).
	Delay, Interval time.Duration
	// Track records a pending tracking row per job first, so even a job
	// that runs at once finds its row to mark succeeded.
	Track bool
	// Retry is the Sidekiq retry option; GitLab's worker uses 3.
	Retry json.RawMessage
	Now   func() time.Time
}

// Schedule enqueues BackgroundMigrationWorker jobs for class, one per
// element of argsList, exactly as a Rails app would, and returns their jids.
func Schedule(ctx context.Context, client *sidekiq.Client, db DB, class string, argsList []json.RawMessage, opts ScheduleOptions) ([]string, error) {
	class = normalizeClass(class)
	if opts.Queue == "" {
		opts.Queue = QueueName
	}
	if opts.Retry == nil {
		opts.Retry = sidekiq.RetryTimes(3)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Track {
		if db == nil {
			return nil, ErrNoDatabase
		}
		if err := Track(ctx, db, class, argsList...); err != nil {
			return nil, err
		}
	}
	payloads := make([]json.RawMessage, len(argsList))
	for i, a := range argsList {
		p, err := workerArgs(class, a, nil)
		if err != nil {
			return nil, err
		}
		payloads[i] = p
	}
	po := sidekiq.PushOptions{Queue: opts.Queue, Retry: opts.Retry}
	if opts.Interval <= 0 {
		if opts.Delay > 0 {
			po.At = opts.Now().Add(opts.Delay)
		}
		return client.PushBulk(ctx, WorkerClass, payloads, po)
	}
	now := opts.Now()
	jids := make([]string, 0, len(payloads))
	for i, p := range payloads {
		po.At = now.Add(opts.Delay + time.Duration(i+1)*opts.Interval)
		jid, err := client.Push(ctx, WorkerClass, p, po)
		if err != nil {
			return jids, err
		}
		jids = append(jids, jid)
	}
	return jids, nil
}

// workerArgs builds BackgroundMigrationWorker's args, keeping the
// migration's argument bytes as they are.
func workerArgs(class string, args json.RawMessage, leaseAttempts *int) (json.RawMessage, error) {
	if len(args) == 0 {
		args = json.RawMessage("[]")
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(args, &arr); err != nil {
		return nil, &ArgsError{Class: class, Err: fmt.Errorf("arguments must be a JSON array: %w", err)}
	}
	name, _ := json.Marshal(class)
	out := append([]byte{'['}, name...)
	out = append(out, ',')
	out = append(out, args...)
	if leaseAttempts != nil {
		out = fmt.Appendf(out, ",%d", *leaseAttempts)
	}
	return append(out, ']'), nil
}

// MarkHow is how an operator closed a pending tracking row by hand.
type MarkHow string

// Ways to mark: both set status succeeded, so upgrade checks pass; the
// record tells them apart.
const (
	MarkedSucceeded MarkHow = "succeeded" // the work was done elsewhere
	MarkedSkipped   MarkHow = "skipped"   // the work is not needed
)

// MarkTarget selects pending tracking rows: one by ID, or all of Class.
type MarkTarget struct {
	ID    int64
	Class string
}

// Mark closes the pending tracking rows of target, recording how, by whom
// and when (columns ferry_marked, ferry_marked_by, ferry_marked_at), and
// returns how many it changed. With dryRun it only counts them.
func Mark(ctx context.Context, db DB, target MarkTarget, how MarkHow, by string, dryRun bool) (int64, error) {
	where := `status = 0 AND (id = $1 OR ($1 = 0 AND class_name = $2))`
	args := []any{target.ID, normalizeClass(target.Class)}
	if dryRun {
		var n int64
		if err := db.QueryRow(ctx, `SELECT count(*) FROM background_migration_jobs WHERE `+where, args...).Scan(&n); err != nil {
			return 0, fmt.Errorf("bm: mark: %w", err)
		}
		return n, nil
	}
	tag, err := db.Exec(ctx, `UPDATE background_migration_jobs
		SET status = 1, updated_at = now(), ferry_marked = $3, ferry_marked_by = $4, ferry_marked_at = now()
		WHERE `+where, append(args, string(how), by)...)
	if err != nil {
		return 0, fmt.Errorf("bm: mark: %w", err)
	}
	return tag.RowsAffected(), nil
}
