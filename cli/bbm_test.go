package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

type bbmCLI struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
}

func (c *bbmCLI) run(args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	var out, errb bytes.Buffer
	all := append([]string{"--database-url", c.url, "--log-level", "error"}, args...)
	code = Main(context.Background(), all, &out, &errb, Options{})
	return code, out.String(), errb.String()
}

func newBBMCLI(t *testing.T) *bbmCLI {
	url := testenv.DatabaseURL(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	_, err = pool.Exec(context.Background(), `CREATE TABLE events (id int PRIMARY KEY, id_convert_to_bigint bigint);
		INSERT INTO events (id) SELECT g FROM generate_series(1, 20000) g; ANALYZE events`)
	if err != nil {
		t.Fatal(err)
	}
	return &bbmCLI{t: t, url: url, pool: pool}
}

// Not parallel: Main writes the package-level preValidate map, so
// concurrent Main calls race (reported to the owner of cli/app.go).
func TestBBMCheckFinalizeFlow(t *testing.T) {
	c := newBBMCLI(t)
	args := `[["id"],["id_convert_to_bigint"]]`
	if code, out, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", args); code != 0 || !strings.Contains(out, "Queued") {
		t.Fatalf("queue: %d %s %s", code, out, errs)
	}
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"], ["id_convert_to_bigint"]]`); code != 0 || !strings.Contains(errs, "already exists") {
		t.Fatalf("queue twice: %d %s", code, errs)
	}
	code, out, _ := c.run("bbm", "check")
	want := "Expected batched background migration for the given configuration to be marked as 'finished', but it is 'active':"
	if code != 1 || !strings.Contains(out, want) ||
		!strings.Contains(out, `ferry bbm finalize CopyColumnUsingBackgroundMigrationJob events id '[["id"],["id_convert_to_bigint"]]'`) ||
		!strings.Contains(out, `{"job_class_name":"CopyColumnUsingBackgroundMigrationJob","table_name":"events","column_name":"id","job_arguments":[["id"],["id_convert_to_bigint"]]}`) {
		t.Fatalf("check: %d\n%s", code, out)
	}
	if code, out, _ := c.run("bbm", "status"); code != 0 || !strings.HasPrefix(out, `active | CopyColumnUsingBackgroundMigrationJob,events,id,[["id"],["id_convert_to_bigint"]]`) {
		t.Fatalf("status: %d %q", code, out)
	}
	// The pasted rake form, as it arrives once the shell removed its quotes.
	code, out, errs := c.run("bbm", "finalize", "--no-progress", `finalize[CopyColumnUsingBackgroundMigrationJob,events,id,[["id"]\, ["id_convert_to_bigint"]]]`)
	if code != 0 || !strings.Contains(out, "Done.") {
		t.Fatalf("finalize: %d %s %s", code, out, errs)
	}
	if code, out, _ := c.run("bbm", "check"); code != 0 {
		t.Fatalf("check after finalize: %d %s", code, out)
	}
	var bad int
	if err := c.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE id_convert_to_bigint IS DISTINCT FROM id`).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("%d rows not copied (%v)", bad, err)
	}
	if code, out, _ := c.run("bbm", "wait", "--interval", "10ms"); code != 0 || !strings.Contains(out, "All batched background migrations have finished.") {
		t.Fatalf("wait: %d %s", code, out)
	}
}

func TestBBMOperatorFlows(t *testing.T) {
	c := newBBMCLI(t)
	ctx := context.Background()
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`); code != 0 {
		t.Fatal(errs)
	}
	if code, out, _ := c.run("bbm", "pause", "1"); code != 0 || !strings.HasPrefix(out, "paused |") {
		t.Fatalf("pause: %d %s", code, out)
	}
	if code, _, errs := c.run("bbm", "resume", "1"); code != 0 {
		t.Fatal(errs)
	}
	if code, _, errs := c.run("bbm", "resume", "1"); code != 1 || !strings.Contains(errs, "You can resume only `paused` background migrations.") {
		t.Fatalf("resume active: %d %s", code, errs)
	}
	if code, _, _ := c.run("bbm", "pause", "99"); code != 2 {
		t.Fatalf("pause unknown: %d", code)
	}
	// A failed migration: retry makes it active with fresh attempts.
	if _, err := c.pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, attempts)
		VALUES (1, 1, 100, 100, 10, 2, 3); UPDATE batched_background_migrations SET status = 4 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := c.run("bbm", "wait", "--interval", "10ms"); code != 1 {
		t.Fatalf("wait with a failed migration: %d", code)
	}
	if code, out, errs := c.run("bbm", "retry", "1"); code != 0 || !strings.HasPrefix(out, "active |") {
		t.Fatalf("retry: %d %s %s", code, out, errs)
	}
	var attempts int
	if err := c.pool.QueryRow(ctx, `SELECT attempts FROM batched_background_migration_jobs WHERE id = 1`).Scan(&attempts); err != nil || attempts != 0 {
		t.Fatalf("attempts %d (%v)", attempts, err)
	}
	// mark-finished refuses without --yes, then logs who did it.
	if code, _, _ := c.run("bbm", "mark-finished", "1"); code != 2 {
		t.Fatalf("mark-finished without --yes: %d", code)
	}
	if code, out, errs := c.run("bbm", "mark-finished", "1", "--yes"); code != 0 || !strings.HasPrefix(out, "finished |") {
		t.Fatalf("mark-finished: %d %s %s", code, out, errs)
	}
	var logged int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'Ferry::MarkedFinished' AND exception_message LIKE 'marked finished by %'`).Scan(&logged); err != nil || logged < 2 {
		t.Fatalf("transition logs: %d (%v)", logged, err)
	}
	var notOK int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE status <> 3`).Scan(&notOK); err != nil || notOK != 0 {
		t.Fatalf("jobs not succeeded: %d", notOK)
	}
	if code, out, _ := c.run("bbm", "show", "1", "--json"); code != 0 || !strings.Contains(out, `"recent_jobs"`) {
		t.Fatalf("show: %d %s", code, out)
	}
	if code, _, _ := c.run("bbm", "set", "max-running", "5"); code != 0 {
		t.Fatal("set max-running")
	}
	if code, _, _ := c.run("bbm", "pause-all"); code != 0 {
		t.Fatal("pause-all")
	}
	var maxRunning int
	var paused bool
	if err := c.pool.QueryRow(ctx, `SELECT max_running, paused_all FROM ferry_bbm_settings`).Scan(&maxRunning, &paused); err != nil || maxRunning != 5 || !paused {
		t.Fatalf("settings %d %v %v", maxRunning, paused, err)
	}
	if code, _, _ := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "users; DROP TABLE x", "id", `[["a"],["b"]]`); code != 2 {
		t.Fatalf("hostile table: %d", code)
	}
}

func TestParseRakeFinalize(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`finalize[CopyColumnUsingBackgroundMigrationJob,events,id,'[["id"]\, ["id_convert_to_bigint"]]']`,
		`sudo gitlab-rake gitlab:background_migrations:finalize[CopyColumnUsingBackgroundMigrationJob,events,id,'[["id"]\,["id_convert_to_bigint"]]']`,
		`finalize[CopyColumnUsingBackgroundMigrationJob,events,id,[["id"]\, ["id_convert_to_bigint"]]]`,
	} {
		c, tb, col, args, err := parseRakeFinalize(in)
		if err != nil || c != "CopyColumnUsingBackgroundMigrationJob" || tb != "events" || col != "id" || strings.ReplaceAll(args, " ", "") != `[["id"],["id_convert_to_bigint"]]` {
			t.Errorf("%s: %q %q %q %q %v", in, c, tb, col, args, err)
		}
	}
}
