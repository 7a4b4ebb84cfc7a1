// Package web is ferry's operator UI and Prometheus endpoint: what GitLab's
// Admin Area > Monitoring > Background Migrations and Sidekiq's Web UI show,
// for one ferry deployment, served from a single binary.
//
// # Pages
//
// Everything is rendered on the server from templates embedded in the
// binary (no CDN, no build step), so every page reads fine without
// JavaScript. A 2 KB script only adds live refresh.
//
//   - /background_migrations: tabs Queued (active + paused), Finalizing,
//     Failed and Finished with counts; progress, rows/s and an ETA per
//     migration.
//   - /background_migrations/{id}: settings, an SVG chart of batch size,
//     batch duration and throughput, recent and failed jobs with their
//     errors, operator actions (pause, resume, retry, finalize, mark finished).
//   - /background_migrations/{id}/jobs/{job_id}: one job and its transition log.
//   - /legacy: legacy (BackgroundMigrationWorker) jobs remaining per class.
//   - /busy, /queues, /retries, /dead: the Sidekiq views ferry shares with Ruby.
//   - /metrics: Prometheus, on the server's own registry (see [NewCollector]).
//
// # Security
//
// Reading is open only when no credentials are configured, and then
// [New] refuses any listen address that is not loopback. Every mutation
// needs credentials ([Auth]: a bearer token, or HTTP basic auth with the
// configured user, or any user name and the token as password) and, for
// browser sessions, a CSRF token tied to the user plus Go's cross-origin
// protection. Every action is written to the ferry_web_actions table
// (one of ferry's schema versions) with who did it and from where.
//
// # One truth
//
// The pages and /metrics read migrations through the engine's read model
// (jobs/bbm: progress, rate, ETA, state and reason), the one `ferry bbm
// status` and `show` print, and act through the engine's operations via
// [Migrations] ([EngineMigrations] by default), so the UI has no SQL on
// the migration tables and no rules of its own.
package web
