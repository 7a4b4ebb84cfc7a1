package ferryschema

// MigrationLogDDL creates what `ferry db` needs in the application's
// database: Rails' schema_migrations and ferry's attempt log. It is not a
// version of ferry's own schema because `ferry db` runs before, and without,
// `ferry setup`; it is idempotent and the migrator runs it under its lock.
const MigrationLogDDL = `
CREATE TABLE IF NOT EXISTS schema_migrations (version character varying NOT NULL PRIMARY KEY);
CREATE TABLE IF NOT EXISTS ferry_migration_log (
	id bigserial PRIMARY KEY,
	version text NOT NULL,
	name text NOT NULL DEFAULT '',
	direction text NOT NULL CHECK (direction IN ('up', 'down', 'mark', 'repair')),
	no_transaction boolean NOT NULL DEFAULT false,
	started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	finished_at timestamptz,
	success boolean,
	dirty boolean NOT NULL DEFAULT false,
	error text,
	backend_pid integer NOT NULL DEFAULT pg_backend_pid(),
	os_pid integer,
	host text,
	application_name text DEFAULT current_setting('application_name')
);
CREATE INDEX IF NOT EXISTS ferry_migration_log_version_id_idx ON ferry_migration_log (version, id);
`
