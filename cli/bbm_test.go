package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/batched"
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
	// None yet: stdout (one line per migration) stays empty, stderr says so.
	if code, out, errs := c.run("bbm", "status"); code != 0 || out != "" || errs != "No batched background migrations.\n" {
		t.Fatalf("status with none: %d %q %q", code, out, errs)
	}
	args := `[["id"],["id_convert_to_bigint"]]`
	if code, out, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", args); code != 0 || !strings.Contains(out, "Queued") {
		t.Fatalf("queue: %d %s %s", code, out, errs)
	}
	if code, _, errs := c.run("--log-level", "info", "bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"], ["id_convert_to_bigint"]]`); code != 0 || strings.Count(errs, "already exists") != 1 {
		// Once: the engine used to log it and the command to print it.
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
		ref, err := parseRef([]string{in})
		if err != nil || ref.cfg == nil {
			t.Fatalf("%s: %+v %v", in, ref, err)
		}
		c := ref.cfg
		if c.Class != "CopyColumnUsingBackgroundMigrationJob" || c.Table != "events" || c.Column != "id" || strings.ReplaceAll(string(c.Args), " ", "") != `[["id"],["id_convert_to_bigint"]]` {
			t.Errorf("%s: %+v", in, c)
		}
	}
}

func TestBBMQueueStatementTimeout(t *testing.T) {
	c := newBBMCLI(t)
	ctx := context.Background()
	for _, bad := range []string{"50ms", "2h", "0", "-1s", "150.5ms", "soon"} {
		code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`, "--statement-timeout", bad)
		if code != 2 || errs == "" {
			t.Errorf("--statement-timeout %s: exit %d, stderr %q", bad, code, errs)
		}
	}
	var n int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migrations`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("invalid timeouts queued %d migrations (%v)", n, err)
	}
	if code, out, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`, "--statement-timeout", "30s"); code != 0 || !strings.Contains(out, "Queued") {
		t.Fatalf("queue: %d %s %s", code, out, errs)
	}
	// Without the flag: the schema's 15s.
	if _, err := c.pool.Exec(ctx, `ALTER TABLE events ADD COLUMN other bigint`); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["other"]]`); code != 0 {
		t.Fatalf("queue default: %d %s", code, errs)
	}
	rows, err := c.pool.Query(ctx, `SELECT statement_timeout_ms FROM batched_background_migrations ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || len(got) != 2 || got[0] != 30000 || got[1] != 15000 {
		t.Fatalf("statement_timeout_ms %v (%v)", got, err)
	}
	if code, out, _ := c.run("bbm", "show", "1"); code != 0 || !strings.Contains(out, "Statement timeout") || !strings.Contains(out, "30s") {
		t.Fatalf("show: %d %s", code, out)
	}
	if code, out, _ := c.run("bbm", "show", "1", "--json"); code != 0 || !strings.Contains(out, `"statement_timeout_ms": 30000`) && !strings.Contains(out, `"statement_timeout_ms":30000`) {
		t.Fatalf("show --json: %d %s", code, out)
	}
}

// A lock another session holds on the table puts the migration on hold;
// `bbm show` and `bbm show --json` say why and name the session.
func TestBBMShowLockWaitHold(t *testing.T) {
	c := newBBMCLI(t)
	ctx := testenv.Context(t)
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`); code != 0 {
		t.Fatal(errs)
	}
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var holder int
	if _, err := tx.Exec(ctx, `LOCK TABLE events IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	e := batched.NewEngine(c.pool, batched.Config{Registry: batched.NewRegistry(), Health: batched.HealthConfig{LockTimeout: 50 * time.Millisecond}})
	defer e.Close()
	if out, err := e.RunBatch(ctx, 1); err != nil || out != batched.Ran {
		t.Fatalf("batch: %v %v", out, err)
	}
	want := fmt.Sprintf("lock_waits: a sub-batch waited over 50ms for a lock on events; sessions holding locks on it: pid %d", holder)
	code, out, _ := c.run("bbm", "show", "1")
	if code != 0 || !strings.Contains(out, "On hold until") || !strings.Contains(out, want) || !strings.Contains(out, "Ferry::LockWait") {
		t.Fatalf("show: %d\n%s", code, out)
	}
	code, out, _ = c.run("bbm", "show", "1", "--json")
	var doc struct {
		Migration struct {
			OnHoldUntil *time.Time `json:"on_hold_until"`
			HoldReason  string     `json:"hold_reason"`
		} `json:"migration"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || doc.Migration.OnHoldUntil == nil || !strings.Contains(doc.Migration.HoldReason, want) {
		t.Fatalf("show --json: %d\n%s", code, out)
	}
	_ = tx.Rollback(ctx)
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	var bad int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE id_convert_to_bigint IS DISTINCT FROM id`).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("%d rows not copied (%v)", bad, err)
	}
}
