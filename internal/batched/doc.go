// Package bbm runs GitLab-style batched background migrations on
// PostgreSQL, in GitLab's tables (see package schema), so GitLab's
// runbooks and status SQL keep working.
//
// # Model
//
// A migration ([Engine.Queue]) walks one table by an integer column. Each
// batch ("job" row) covers the next batch_size existing rows after the
// highest range handed out so far (keyset: gaps cost nothing); the job
// rows are the cursor. A batch runs as sub-batch statements, each one
// transaction under statement_timeout and lock_timeout that also records the
// batch's progress (cursor_value) and only writes if this engine still
// owns the batch. A retried batch therefore resumes after its last
// committed sub-batch and no row is migrated twice, even when a worker is
// killed mid-batch.
//
// # Running batches
//
// Engines claim batches under row locks: a migration's row lock for
// anything that changes its number of running batches, and the settings
// row for a migration going from idle to running, so max-running holds for
// any number of processes. Each engine heartbeats a session row (it works
// through a transaction pooler, where a session lock would not); once a
// heartbeat is older than a few seconds, live engines the database also
// sees alive take its batches over from their last committed sub-batch.
// In `ferry worker`, a [Service] ticks every second
// (package scheduler) and chains Sidekiq jobs in the background_migration
// queue, one batch each; [Engine.RunLocal] runs batches in-process.
//
// # Speed and safety
//
// Batch sizes converge to a target duration (see [NextBatchSize]) and
// sub-batches to a per-statement budget. Instead of fixed sleeps, database
// signals ([Engine.Evaluate]: autovacuum on the table, replication lag,
// lock waits involving our statements, long transactions) put a migration
// on hold with a reason, backing off exponentially. While other sessions
// are busy in the database (contention: pg_stat_activity sampled after each
// sub-batch), sub-batches are paced to a duty cycle, the largest that
// keeps others' p99 latency within a budget as a canary transaction
// measures it (HealthConfig.MaxLatencyImpact), and full speed returns when
// the others go quiet; jobs record the duty cycle in their metrics and
// `bbm show` the reason. The duty cycle is the database's:
// paced sub-batches of every batch and process take turns on one clock
// (table ferry_bbm_pace), so parallel batches share it.
//
// # Decisions where GitLab is awkward
//
//   - Failed batches are handled like successful ones: the failed-ratio
//     stop (over 50% of at least 50 batches) is checked after failures,
//     and timeouts shrink the batch size; GitLab's exceptions skip both.
//   - No 1,000-row floor: sizes go as low as the measured speed needs (at
//     least one row), and a small configured batch is not raised.
//   - Stuck batches are detected from dead sessions within a second, not
//     after an hour, and a worker death counts as an attempt (so a batch
//     that kills its worker cannot loop forever); batches without a
//     session (e.g. rows written by GitLab) use GitLab's hour.
//   - Progress counts rows actually processed (rows_done), not configured
//     batch sizes; it stays below 100% until the migration is finished.
//   - Retriable batches run before new ranges, so failures surface early.
//
// # Writing a class
//
// A [Class] names itself, its argument count and a Plan function that
// returns either an UPDATE SET list (fast path, one statement per
// sub-batch) or a Do function run inside the sub-batch transaction.
// Register it in a [Registry] (from your main: process.Registries.BBM, e.g. in cli.Options.Register).
package batched
