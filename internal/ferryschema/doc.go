// Package schema owns ferry's own PostgreSQL tables and upgrades them.
//
// # Tables
//
// The batched background migration tables keep GitLab's names, column names
// and status codes, so operator runbooks and GitLab's documented SQL work
// unchanged; ferry adds columns of its own (prefixed by nothing, documented
// in the DDL below):
//
//   - batched_background_migrations (migration: paused 0, active 1,
//     finished 3, failed 4, finalizing 5, finalized 6)
//   - batched_background_migration_jobs (job: pending 0, running 1,
//     failed 2, succeeded 3)
//   - batched_background_migration_job_transition_logs
//   - background_migration_jobs (legacy tracking: pending 0, succeeded 1;
//     ferry_marked, _by, _at: rows an operator marked done, `ferry bm mark`)
//   - ferry_bbm_settings (one row: max_running, paused_all)
//   - ferry_bbm_pace (one row: when the next paced sub-batch may start,
//     shared by every batch of every process)
//   - ferry_schema_versions (which of the versions below are applied)
//
// # Applying
//
// [Apply] is idempotent and safe to call from many processes at once: it
// takes a transaction-level advisory lock, applies the versions that are
// missing in order, and records each in ferry_schema_versions, all in one
// transaction. `ferry setup` and every `ferry worker` call it at start.
package ferryschema
