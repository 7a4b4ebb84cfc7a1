package test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

const gateText = "Expected batched background migration for the given configuration to be marked as 'finished', but it is "

// A required batched migration that is not finished stops migrate with
// GitLab's text and the ferry command that fixes it; once the row is
// finished, migrate goes on.
func TestDBGateStopsUntilBBMFinished(t *testing.T) {
	e := newDBEnv(t)
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO batched_background_migrations
		(job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size)
		VALUES ('CopyColumnUsingBackgroundMigrationJob', 'events', 'id', '[["id"], ["id_convert_to_bigint"]]', 0, 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	e.write("2_swap.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"],[\"id_convert_to_bigint\"]]\nCREATE TABLE b (id int);\n")

	_, errs := e.wantExit(1, "migrate")
	want := "ferry: " + gateText + `'paused':` + "\t" +
		`{"job_class_name":"CopyColumnUsingBackgroundMigrationJob","table_name":"events","column_name":"id","job_arguments":[["id"],["id_convert_to_bigint"]]}` +
		"\n\nFinalize it manually by running the following command in a `bash` or `sh` shell:\n\n" +
		"\tferry bbm finalize CopyColumnUsingBackgroundMigrationJob events id '[[\"id\"],[\"id_convert_to_bigint\"]]'\n"
	if !strings.HasPrefix(errs, want) {
		t.Fatalf("stderr:\n%s\nwant prefix:\n%s", errs, want)
	}
	if !e.exists("a") || e.exists("b") {
		t.Fatal("migrations before the gate must apply, the gated one must not")
	}
	if _, err := e.pool.Exec(e.ctx, `UPDATE batched_background_migrations SET status = 3`); err != nil {
		t.Fatal(err)
	}
	out := e.mustFerry("migrate")
	wantContains(t, out, "2 swap: migrated")
}

// With the real engine: a migration queues a backfill, the next one
// requires it; migrate stops while it is active, `ferry bbm finalize`
// (the printed command) runs it, and migrate then passes. --finalize does
// the same inline.
func TestDBGateWithEngine(t *testing.T) {
	for _, inline := range []bool{false, true} {
		name := "bbm-finalize"
		if inline {
			name = "migrate-finalize"
		}
		t.Run(name, func(t *testing.T) {
			e := newDBEnv(t)
			e.write("1_events.up.sql", "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);\nINSERT INTO events (payload) SELECT 'p' || g FROM generate_series(1, 300) g;\n")
			e.write("2_add_big.up.sql", "-- ferry:queue-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"], [\"id_big\"]]\nALTER TABLE events ADD COLUMN id_big bigint;\n")
			e.write("3_require.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"],[\"id_big\"]]\nALTER TABLE events ALTER COLUMN id_big SET NOT NULL;\n")

			if !inline {
				// The dry run knows that file 2 queues what file 3 requires.
				out := e.mustFerry("migrate", "--dry-run")
				wantContains(t, out, "(queued by 2_add_big earlier in this run: migrate would stop here until it is finished")
			}
			if inline {
				out := e.mustFerry("migrate", "--finalize")
				wantContains(t, out, "queued batched background migration", "finalizing batched background migration", "3 require: migrated")
			} else {
				out, errs := e.wantExit(1, "migrate")
				wantContains(t, out, "queued batched background migration CopyColumnUsingBackgroundMigrationJob events id")
				wantContains(t, errs, "ferry: "+gateText+"'active':", `ferry bbm finalize CopyColumnUsingBackgroundMigrationJob events id '[["id"],["id_big"]]'`)
				var o, eb bytes.Buffer
				code := cli.Main(e.ctx, []string{"bbm", "finalize", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_big"]]`,
					"--database-url", e.url, "--log-level", "error"}, &o, &eb, cli.Options{})
				if code != 0 {
					t.Fatalf("bbm finalize: exit %d\n%s\n%s", code, o.String(), eb.String())
				}
				wantContains(t, e.mustFerry("migrate"), "3 require: migrated")
			}
			var missing int
			if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM events WHERE id_big IS DISTINCT FROM id`).Scan(&missing); err != nil || missing != 0 {
				t.Fatalf("backfill incomplete: %d rows, %v", missing, err)
			}
			var version string
			if err := e.pool.QueryRow(e.ctx, `SELECT queued_migration_version FROM batched_background_migrations`).Scan(&version); err != nil || version != "2" {
				t.Fatalf("queued_migration_version = %q, %v", version, err)
			}
		})
	}
}

// The gate matches a configuration as finalize does: a migration queued as
// `events` is the one a gate names `public.events` (or `"events"`), so a
// file that drops the source column cannot run while the copy is unfinished.
// Dry run says so; a gate naming a migration never queued says what it
// looked for and continues, as GitLab does.
func TestDBGateMatchesEverySpellingOfTheTable(t *testing.T) {
	e := newDBEnv(t)
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `CREATE TABLE events (id int PRIMARY KEY, v int, v_big bigint);
		INSERT INTO batched_background_migrations
		(job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size)
		VALUES ('CopyColumnUsingBackgroundMigrationJob', 'events', 'id', '[["v"], ["v_big"]]', 1, 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	e.write("1_drop_v.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob public.events id [[\"v\"],[\"v_big\"]]\n"+
		"-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events other [[\"v\"],[\"v_big\"]]\n"+
		"ALTER TABLE events DROP COLUMN v;\n")
	out := e.mustFerry("migrate", "--dry-run")
	wantContains(t, out, "public.events id [[\"v\"],[\"v_big\"]] (it is 'active': migrate would stop here",
		"events other [[\"v\"],[\"v_big\"]] (never queued in this database: migrate warns and continues)")
	// A gate migrate passes over has nothing to estimate.
	if _, after, _ := strings.Cut(out, "migrate warns and continues)\n"); strings.HasPrefix(after, "--   estimate:") {
		t.Fatalf("an estimate for a gate that is passed over:\n%s", out)
	}
	_, errs := e.wantExit(1, "migrate")
	wantContains(t, errs, gateText+"'active':", "ferry bbm finalize CopyColumnUsingBackgroundMigrationJob public.events id")
	var hasV bool
	if err := e.pool.QueryRow(e.ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'events' AND column_name = 'v')`).Scan(&hasV); err != nil || !hasV {
		t.Fatalf("the gated file ran and dropped the source column (%v)", err)
	}
	if _, err := e.pool.Exec(e.ctx, `UPDATE batched_background_migrations SET status = 3`); err != nil {
		t.Fatal(err)
	}
	code, out, errs := e.ferry("migrate")
	if code != 0 {
		t.Fatalf("migrate after the copy finished: exit %d\n%s\n%s", code, out, errs)
	}
	wantContains(t, out, "CopyColumnUsingBackgroundMigrationJob,events,other,[[\"v\"],[\"v_big\"]] was never queued in this database")
}

// Reverting the migration that queued a backfill deletes it, as GitLab's
// down does: migrating up again queues it afresh, so the gate after it
// waits for a copy of the re-added column instead of passing on the old
// finished migration while the column is empty.
func TestDBDowntoDeletesWhatItsUpQueued(t *testing.T) {
	e := newDBEnv(t)
	e.write("1_events.up.sql", "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);\nINSERT INTO events (payload) SELECT 'p' || g FROM generate_series(1, 300) g;\n")
	e.write("2_add_big.up.sql", "-- ferry:queue-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"], [\"id_big\"]]\nALTER TABLE events ADD COLUMN id_big bigint;\n")
	e.write("2_add_big.down.sql", "ALTER TABLE events DROP COLUMN id_big;\n")
	e.write("3_require.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob events id [[\"id\"],[\"id_big\"]]\nSELECT 1;\n")
	e.write("3_require.down.sql", "SELECT 1;\n")
	e.mustFerry("migrate", "--finalize")
	// Another version's migration of the same configuration is not its to delete.
	if _, err := e.pool.Exec(e.ctx, `UPDATE batched_background_migrations SET queued_migration_version = '9'`); err != nil {
		t.Fatal(err)
	}
	if out := e.mustFerry("downto", "2"); strings.Contains(out, "deleted batched background migration") {
		t.Fatalf("downto 2 deleted a migration 3 did not queue:\n%s", out)
	}
	if _, err := e.pool.Exec(e.ctx, `UPDATE batched_background_migrations SET queued_migration_version = '2'`); err != nil {
		t.Fatal(err)
	}
	out := e.mustFerry("downto", "1")
	wantContains(t, out, "-- deleted batched background migration CopyColumnUsingBackgroundMigrationJob events id")
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM batched_background_migrations`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d migrations after reverting the one that queued it (%v)", n, err)
	}
	// Up again: queued afresh, and the gate waits for it.
	out, errs := e.wantExit(1, "migrate")
	wantContains(t, out, "queued batched background migration", "2 add_big: migrated")
	wantContains(t, errs, gateText+"'active':")
	e.mustFerry("migrate", "--finalize")
	var missing int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM events WHERE id_big IS DISTINCT FROM id`).Scan(&missing); err != nil || missing != 0 {
		t.Fatalf("backfill after going down and up again: %d rows missing, %v", missing, err)
	}
}
