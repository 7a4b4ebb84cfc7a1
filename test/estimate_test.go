package test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// bbm runs `ferry bbm <args>` in-process on this env's database.
func (e *dbEnv) bbm(args ...string) string {
	e.t.Helper()
	var out, errb bytes.Buffer
	full := append(append([]string{"bbm"}, args...), "--database-url", e.url, "--log-level", "error")
	if code := cli.Main(e.ctx, full, &out, &errb, cli.Options{}); code != 0 {
		e.t.Fatalf("ferry %v exited %d\nstdout: %s\nstderr: %s", full, code, out.String(), errb.String())
	}
	return out.String()
}

// An operator learns how long an upgrade's batched migrations will take
// before starting it: `db migrate --dry-run` prints an estimate for each
// one it queues or requires, `bbm status` for a queued one. Without a
// finished migration on the database the rate is a guess from a timed read
// (and the dry run creates nothing); with finished ones (synthetic here:
// 1,000 rows/s each, one with a long pause and one with pacing sleeps that
// must not count) it is their rate.
func TestEstimateBeforeTheUpgrade(t *testing.T) {
	e := newDBEnv(t)
	if _, err := e.pool.Exec(e.ctx, `CREATE TABLE events (id int PRIMARY KEY, v int, v_big bigint);
		INSERT INTO events SELECT g, g FROM generate_series(1, 30000) g; ANALYZE events`); err != nil {
		t.Fatal(err)
	}
	const cfg = `CopyColumnUsingBackgroundMigrationJob events id [["v"],["v_big"]]`
	e.write("1_queue.up.sql", "-- ferry:queue-bbm "+cfg+"\nCREATE TABLE a (id int);\n")
	e.write("2_swap.up.sql", "-- ferry:require-bbm "+cfg+"\nCREATE TABLE b (id int);\n")

	out := e.mustFerry("migrate", "--dry-run")
	wantContains(t, out, "-- then queues batched background migration: CopyColumnUsingBackgroundMigrationJob events id")
	wantContains(t, out, "--   estimate: no rate measured yet on this database: guessed from a read of 20,000 rows in ")
	wantContains(t, out, "for 30,000 rows to go (pg_class.reltuples); on an idle database: while the application uses it, ferry runs as little as 2% of the time")
	var ferryTables bool
	if err := e.pool.QueryRow(e.ctx, `SELECT to_regclass('batched_background_migrations') IS NOT NULL`).Scan(&ferryTables); err != nil || ferryTables {
		t.Fatalf("the dry run created ferry's tables (%v)", err)
	}

	// Three finished copies at 1,000 rows/s: one straight, one paused for
	// an hour between its batches, one that slept 100 s in pacing.
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	// Queued with nothing finished here yet: bbm status guesses from the
	// same timed read, with a duration and its range.
	e.bbm("queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["v"],["v_big"]]`)
	wantContains(t, e.bbm("status"), "not started, estimate: no rate measured yet on this database: guessed from a read of 20,000 rows in ",
		"for 30,000 rows to go (its row estimate (total_tuple_count) minus the rows done)")
	if _, err := e.pool.Exec(e.ctx, `DELETE FROM batched_background_migrations`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `
		INSERT INTO batched_background_migrations (id, job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size, finished_at)
		VALUES (101, 'CopyColumnUsingBackgroundMigrationJob', 'old1', 'id', '[["a"],["b"]]', 3, 1000, 100, now() - interval '3 days'),
		       (102, 'CopyColumnUsingBackgroundMigrationJob', 'old2', 'id', '[["a"],["b"]]', 6, 1000, 100, now() - interval '2 days'),
		       (103, 'CopyColumnUsingBackgroundMigrationJob', 'old3', 'id', '[["a"],["b"]]', 3, 1000, 100, now() - interval '1 day');
		INSERT INTO batched_background_migration_jobs (batched_background_migration_id, status, min_value, max_value, batch_size, sub_batch_size, rows_done, started_at, finished_at, metrics)
		VALUES (101, 3, 1, 500000, 500000, 1000, 500000, now() - interval '3 days 1000 seconds', now() - interval '3 days 500 seconds', '{}'),
		       (101, 3, 500001, 1000000, 500000, 1000, 500000, now() - interval '3 days 500 seconds', now() - interval '3 days', '{}'),
		       (102, 3, 1, 500000, 500000, 1000, 500000, now() - interval '2 days 5000 seconds', now() - interval '2 days 4500 seconds', '{}'),
		       (102, 3, 500001, 1000000, 500000, 1000, 500000, now() - interval '2 days 500 seconds', now() - interval '2 days', '{}'),
		       (103, 3, 1, 1000000, 1000000, 1000, 1000000, now() - interval '1 day 1100 seconds', now() - interval '1 day', '{"pacing": {"paused_s": 100}}')`); err != nil {
		t.Fatal(err)
	}
	out = e.mustFerry("migrate", "--dry-run")
	wantContains(t, out, "--   estimate: about 30 s (20 s-45 s) for 30,000 rows to go (pg_class.reltuples), from 3 finished migrations of the same class on this database at 1.0k rows/s")

	// Queued (by hand, as the first file would): the estimate is what is
	// left of it, and `bbm status` shows the same.
	e.bbm("queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["v"],["v_big"]]`)
	out = e.mustFerry("migrate", "--dry-run")
	wantContains(t, out, "-- requires finished batched background migration: CopyColumnUsingBackgroundMigrationJob events id")
	// Once under the queueing file, once under the requiring one.
	if n := strings.Count(out, "\n--   estimate: about 30 s (20 s-45 s) for 30,000 rows to go (its row estimate (total_tuple_count) minus the rows done), from 3 finished migrations"); n != 2 {
		t.Fatalf("%d estimates of the queued migration in\n%s", n, out)
	}
	status := e.bbm("status")
	wantContains(t, status, "not started, estimate: about 30 s (20 s-45 s) for 30,000 rows to go")
	var list []struct {
		Progress struct {
			Estimate *struct {
				Seconds float64 `json:"seconds"`
				Runs    int     `json:"finished_migrations"`
			} `json:"estimate"`
		} `json:"progress_info"`
		Class  string `json:"job_class_name"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(e.bbm("status", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	queued := 0
	for _, m := range list {
		if m.Status != "active" {
			if m.Progress.Estimate != nil {
				t.Fatalf("a %s migration has an estimate", m.Status)
			}
			continue
		}
		queued++
		if est := m.Progress.Estimate; est == nil || est.Seconds != 30 || est.Runs != 3 {
			t.Fatalf("queued migration's estimate: %+v", est)
		}
	}
	if queued != 1 || !strings.Contains(status, "finished | ") {
		t.Fatalf("%d queued in\n%s", queued, status)
	}
}
