// Package process is ferry's composition root: it builds a worker process
// from [Options] (a Redis client, an optional PostgreSQL pool, the
// registries of job classes, the admin UI, health probes) and runs it. The
// ferry binary's `worker` command is this package with flags and config
// mapped to options; your own main can embed ferry the same way, with your
// classes added to the [Registries].
//
// What a process runs:
//   - the Sidekiq-compatible runtime (package worker) on the configured
//     queues, with every class of Registries.Workers;
//   - with a database: ferry's tables created or upgraded, batched
//     background migrations (internal/batched's scheduler and execution jobs), and
//     legacy BackgroundMigrationWorker jobs (internal/legacy) that can use it;
//   - optionally the admin UI and /metrics (package web), HTTP liveness and
//     readiness probes, and systemd's notify protocol.
//
// Signals are the caller's: cancel Run's context to stop (TERM), call
// Runtime().Quiet() on TSTP.
package process
