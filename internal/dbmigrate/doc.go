// Package dbmigrate runs versioned SQL schema migrations the way a Rails or
// GitLab operator expects, with the failure handling a large upgrade needs.
//
// # Files
//
// A directory holds <version>_<name>.up.sql and <version>_<name>.down.sql.
// Versions are digits compared as integers of any size (Rails timestamps
// such as 20151103134857). [Load] reads and validates a directory.
//
// # State
//
// Applied versions live in Rails' schema_migrations(version), so an
// existing application's table is used as is and
//
//	INSERT INTO schema_migrations (version) VALUES ('20151103134857');
//
// marks a migration complete, as GitLab's mark_migration_complete does.
// Every attempt is also recorded in ferry_migration_log (direction, start,
// finish, success, error, backend pid, host): that history is what tells a
// failed migration from one whose migrator died, and what status prints.
//
// # Transactions and dirty databases
//
// A migration runs in one transaction together with its schema_migrations
// row, so a failure leaves nothing behind and can simply be retried. A file
// whose first line is
//
//	-- ferry:no-transaction
//
// runs statement by statement outside a transaction (CREATE INDEX
// CONCURRENTLY). If it fails, or its migrator dies, the database may be
// half-migrated: it is dirty, and [Migrator.Migrate] refuses to continue
// until a human either fixes it and calls [Migrator.Repair], or undoes it
// with [Migrator.DownTo] (down files must therefore be idempotent, e.g.
// DROP INDEX IF EXISTS). We never retry or roll back automatically.
//
// # One migrator at a time
//
// A session advisory lock serialises migrators. The loser fails at once (or
// after Options.LockTimeout) with a [LockedError] naming the holder from
// pg_stat_activity.
//
// # Gates to batched background migrations
//
// An up file can queue a batched background migration once its schema
// change is committed, and can require one to be finished before it runs
// (GitLab's queue_batched_background_migration and
// ensure_batched_background_migration_is_finished):
//
//	-- ferry:queue-bbm CopyColumnUsingBackgroundMigrationJob events id [["id"],["id_big"]]
//	-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events id [["id"],["id_big"]]
//
// Directives are lines of their own; the JSON arguments are the rest of the
// line. A required migration that is not finished is finalized inline when
// Options.Finalize is set; otherwise the run stops with a [GateError] whose
// text is GitLab's, naming the `ferry bbm finalize` command that fixes it.
// Gates talk to the engine through the small [BBMGate] interface.
//
// # Going back to an older release
//
// A down file whose line is "-- ferry:irreversible [why]" is never run:
// [Migrator.DownTo] and [Migrator.DownToRelease] refuse, naming it.
// [LoadRelease] reads which versions an older release's migrations
// directory holds (ferry's files or Sourcegraph's <version>/up.sql
// directories); [Migrator.DownToRelease] reverts, newest first, every
// applied migration it does not hold, with this release's down files, and
// only when every step can run ([Migrator.PlanRelease] says what and why
// not, without changing anything).
//
// # Backups
//
// [Backup] and [Restore] wrap pg_dump and pg_restore so that a failed
// upgrade can be undone completely. Restore checks the whole archive
// first (readable to the end, its own database name, ferry schema not
// newer than the binary's); then, in one transaction, it drops every user
// object the backup does not contain (relations, types, domains,
// functions, procedures, aggregates, schemas, extensions, event triggers,
// and foreign keys added between tables it does contain), so objects
// created by the failed attempt cannot break the next one with "already
// exists", and runs pg_restore --clean's script, which drops and recreates
// every table of the backup, taking columns, indexes and triggers added to
// them along. A restore that fails changes nothing.
package dbmigrate
