// Package bm runs GitLab-style legacy (non-batched) background migrations:
// Sidekiq jobs of class BackgroundMigrationWorker in queue
// background_migration whose args are
// [MigrationClassName, [args...], lease_attempts?], exactly as a Rails app
// enqueues them with perform_async, perform_in or a bulk push.
//
// # Migration classes
//
// A migration class is an [Args] type, whose Kind is the class name Ruby
// enqueues, and a [Migration] registered in a [Registry]:
//
//	type BackfillArgs struct {
//		StartID, EndID int64
//	}
//
//	func (BackfillArgs) Kind() string { return "BackfillThings" }
//
//	legacy.Add(reg, legacy.PerformFunc[BackfillArgs](func(ctx context.Context, job *legacy.Job[BackfillArgs]) error {
//		_, err := job.DB.Exec(ctx, `UPDATE things SET ... WHERE id BETWEEN $1 AND $2`, job.Args.StartID, job.Args.EndID)
//		return err
//	}))
//
// Arguments are decoded positionally, as in package worker. The built-in
// [CopyColumn] copies one column into another over an id range; it checks
// table and column names against pg_catalog and quotes them, so hostile
// arguments are rejected with an [IdentifierError] instead of reaching SQL.
// A [Runner] performs a class by name and then marks the matching rows of
// the tracking table background_migration_jobs succeeded ([MarkSucceeded]).
//
// # The worker
//
// [Worker] (registered with [AddWorker]) runs BackgroundMigrationWorker
// jobs at the database's pace. A job's arguments are decoded and checked
// first ([Validator]: tables and columns exist), so a bad job goes to the
// dead set at once. Then it waits (up to WorkerConfig.LeaseWait) for a
// running slot of its class: at most Concurrency jobs of a class (default
// 1) and MaxRunning legacy jobs in all run at once across the cluster; a
// slot is held while the job runs and released when it ends, so the next
// job starts at once. A [HealthCheck] (replication slot lag and WAL
// archiving by default; a worker process uses batched migrations' signals
// too) holds jobs back while the database is unhealthy, and a [Pacer]
// (batched.SharedPace in a worker process) keeps a pause after each job
// while other sessions use the database. A job that got no slot goes back to the end of its queue, one held for
// health is rescheduled: never dropped. WorkerConfig.MinInterval
// restores GitLab's BackgroundMigrationWorker instead: a per-class [Lease]
// that is never released and lapses after the interval, with a bounded
// number of lease attempts. While [Pause] is in effect every job is
// rescheduled 4 hours later. Every decision is logged with its reason.
//
// # Operator tools
//
// [Coordinator] is GitLab's JobCoordinator: [Coordinator.Remaining] counts
// jobs per class, [Coordinator.Steal] takes a class's jobs out of Redis and
// performs them in the calling process (see sidekiq.Steal: linear time, safe
// to run from several processes at once, each job performed only by the
// process that removed it, failures pushed back; runs of jobs of a
// [BatchMigration] are performed together), and
// [Coordinator.Finalize] steals, performs pending tracked jobs and steals
// again. `ferry bm ...` is the command-line face of these.
//
// # Scheduling
//
// [Schedule] enqueues jobs the way Rails helpers do, optionally spaced by
// an interval and recorded in the tracking table first ([Track]).
package legacy
