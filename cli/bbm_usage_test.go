package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

const copyArgs = `[["id"],["id_convert_to_bigint"]]`

// listedMigration is what a test reads of list --json (batched.Status has no
// UnmarshalText).
type listedMigration struct {
	ID       int64  `json:"id"`
	Status   string `json:"status"`
	Progress struct {
		RowsDone int64    `json:"rows_done"`
		ETA      *float64 `json:"eta_seconds"`
	} `json:"progress_info"`
}

// Values out of an integer column's range are refused before they reach
// PostgreSQL (which answered with a raw encoding error and exit 1);
// the largest ones it holds are queued.
func TestBBMQueueInt4Range(t *testing.T) {
	c := newBBMCLI(t)
	code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs, "--batch-size", "99999999999")
	if code != 2 || firstLine(errs) != "ferry: --batch-size: must be at most 2147483647, got 99999999999" {
		t.Fatalf("--batch-size 99999999999: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs, "--batch-size", "0"); code != 2 || firstLine(errs) != "ferry: --batch-size: must be at least 1, got 0" {
		t.Fatalf("--batch-size 0: exit %d, stderr %q", code, errs)
	}
	if code, out, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs,
		"--batch-size", "2147483647", "--max-batch-size", "2147483647", "--sub-batch-size", "2147483647", "--pause-ms", "2147483647"); code != 0 {
		t.Fatalf("largest int4 values: exit %d %s %s", code, out, errs)
	}
	var n, size int
	if err := c.pool.QueryRow(context.Background(), `SELECT count(*), max(batch_size) FROM batched_background_migrations`).Scan(&n, &size); err != nil || n != 1 || size != 2147483647 {
		t.Fatalf("%d migrations queued, batch size %d (%v); want only the valid one", n, size, err)
	}
	if code, _, errs := c.run("bbm", "show", "1", "--limit", "-1"); code != 2 || !strings.HasPrefix(firstLine(errs), "ferry: --limit: must be at least 0") {
		t.Fatalf("show --limit -1: exit %d, stderr %q", code, errs)
	}
	if code, out, errs := c.run("bbm", "show", "1", "--limit", "0"); code != 0 || !strings.Contains(out, "Recent jobs:") {
		t.Fatalf("show --limit 0: exit %d %s %s", code, out, errs)
	}
}

// list shows no ETA for migrations that do not advance (paused, failed,
// finished), in text and JSON, and says once that pause-all is on.
func TestBBMListETAAndPauseAll(t *testing.T) {
	c := newBBMCLI(t)
	ctx := context.Background()
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs); code != 0 {
		t.Fatal(errs)
	}
	// A batch that did 1000 rows over the last 5 seconds: a rate, and an
	// ETA for the rows left of the estimate.
	if _, err := c.pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs (batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, rows_done, started_at, finished_at, updated_at)
		VALUES (1, 1, 1000, 1000, 100, 3, 1000, now() - interval '5 seconds', now(), now())`); err != nil {
		t.Fatal(err)
	}
	listLine := func() (string, []listedMigration) {
		t.Helper()
		code, out, errs := c.run("bbm", "list")
		if code != 0 {
			t.Fatalf("list: %d %s", code, errs)
		}
		code, js, errs := c.run("bbm", "list", "--json")
		var doc []listedMigration
		if code != 0 || json.Unmarshal([]byte(js), &doc) != nil || len(doc) != 1 {
			t.Fatalf("list --json: %d %s %s", code, js, errs)
		}
		return out, doc
	}
	out, doc := listLine()
	if !strings.HasPrefix(out, `active | CopyColumnUsingBackgroundMigrationJob,events,id,[["id"],["id_convert_to_bigint"]] | id 1, `) ||
		!strings.Contains(out, "rows/s") || !strings.Contains(out, "ETA ") || doc[0].Progress.ETA == nil {
		t.Fatalf("active: want an ETA: %q %+v", out, doc[0].Progress)
	}
	for _, st := range []struct {
		status batched.Status
		name   string
	}{{batched.Paused, "paused"}, {batched.Failed, "failed"}, {batched.Finished, "finished"}} {
		if _, err := c.pool.Exec(ctx, `UPDATE batched_background_migrations SET status = $1`, int16(st.status)); err != nil {
			t.Fatal(err)
		}
		out, doc := listLine()
		if !strings.HasPrefix(out, st.name+" | CopyColumnUsingBackgroundMigrationJob,events,id,") || strings.Contains(out, "ETA") || doc[0].Progress.ETA != nil {
			t.Errorf("%s: want no ETA: %q, eta_seconds %v", st.name, out, doc[0].Progress.ETA)
		}
	}
	if strings.Contains(out, "all migrations paused") {
		t.Fatalf("pause-all is off: %q", out)
	}
	if code, _, errs := c.run("bbm", "pause-all"); code != 0 {
		t.Fatal(errs)
	}
	code, out, _ := c.run("bbm", "list")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 2 || lines[1] != "all migrations paused (ferry bbm resume-all)" {
		t.Fatalf("list with pause-all: %d %q", code, out)
	}
	if code, _, errs := c.run("bbm", "resume-all"); code != 0 {
		t.Fatal(errs)
	}
	if code, out, _ := c.run("bbm", "list"); code != 0 || strings.Contains(out, "all migrations paused") {
		t.Fatalf("list after resume-all: %d %q", code, out)
	}
}

// wait --json prints, at the end, only JSON on stdout: the final state of
// every migration it waited on, as list --json does; its messages go to
// stderr. Exit codes are those of wait.
func TestBBMWaitJSON(t *testing.T) {
	c := newBBMCLI(t)
	ctx := testenv.Context(t)
	if code, out, errs := c.run("bbm", "wait", "--json", "--interval", "10ms"); code != 0 || strings.TrimSpace(out) != "[]" || !strings.Contains(errs, "All batched background migrations have finished.") {
		t.Fatalf("wait --json, nothing to wait on: %d %q %q", code, out, errs)
	}
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs); code != 0 {
		t.Fatal(errs)
	}
	// Workers of this test finish it while wait polls.
	e := batched.NewEngine(c.pool, batched.Config{Registry: batched.NewRegistry()})
	defer e.Close()
	ran := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond) // let wait see it unfinished
		ran <- e.RunLocal(ctx, 2, true)
	}()
	code, out, errs := c.run("bbm", "wait", "--json", "--interval", "50ms")
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	var doc []listedMigration
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc) != 1 || doc[0].ID != 1 || doc[0].Status != "finished" ||
		doc[0].Progress.RowsDone != 20000 {
		t.Fatalf("wait --json: %d\nstdout %s\nstderr %s", code, out, errs)
	}
	if !strings.Contains(errs, "Still waiting on 1 batched background migration(s):") || !strings.Contains(errs, "All batched background migrations have finished.") {
		t.Fatalf("wait --json messages on stderr: %q", errs)
	}
	// A failed migration: exit 1, JSON still printed, with its status.
	if _, err := c.pool.Exec(ctx, `UPDATE batched_background_migrations SET status = 4`); err != nil {
		t.Fatal(err)
	}
	code, out, errs = c.run("bbm", "wait", "--json", "--interval", "10ms")
	doc = nil
	if code != 1 || json.Unmarshal([]byte(out), &doc) != nil || len(doc) != 1 || doc[0].Status != "failed" || !strings.Contains(errs, "in a failed state") {
		t.Fatalf("wait --json with a failed migration: %d\nstdout %s\nstderr %s", code, out, errs)
	}
	// Without --json, the messages stay on stdout.
	if code, out, _ := c.run("bbm", "wait", "--interval", "10ms"); code != 1 || !strings.Contains(out, "in a failed state") {
		t.Fatalf("wait: %d %q", code, out)
	}
}

var barCountRe = regexp.MustCompile(`\((\d+)/(\d+)\)`)

// A finalize that cannot complete leaves the bar at the rows really done,
// not at 100%, then prints the error; one that completes ends at 100%.
func TestBBMFinalizeBarOnFailure(t *testing.T) {
	c := newBBMCLI(t)
	ctx := testenv.Context(t)
	// Rows from 10001 on cannot be copied: their batches fail.
	if _, err := c.pool.Exec(ctx, `ALTER TABLE events ADD CONSTRAINT small CHECK (id_convert_to_bigint <= 10000)`); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := c.run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs, "--batch-size", "2000", "--sub-batch-size", "500"); code != 0 {
		t.Fatal(errs)
	}
	code, out, errs := c.run("bbm", "finalize", "--progress", "bar", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs)
	var done int64
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE id_convert_to_bigint = id`).Scan(&done); err != nil {
		t.Fatal(err)
	}
	bar, msg, _ := strings.Cut(errs, "\nferry: ")
	drawn := lastDrawn(bar)
	m := barCountRe.FindStringSubmatch(drawn)
	if code != 1 || strings.Contains(errs, "100%") || m == nil || m[1] != strconv.FormatInt(done, 10) || !strings.Contains(msg, "could not be completed") {
		t.Fatalf("failed finalize: exit %d, %d rows done, drawn %q\nstdout %s\nstderr %q", code, done, drawn, out, errs)
	}
	if done == 0 || done >= 20000 {
		t.Fatalf("%d rows done; the test wants a partial migration", done)
	}

	if _, err := c.pool.Exec(ctx, `ALTER TABLE events DROP CONSTRAINT small`); err != nil {
		t.Fatal(err)
	}
	code, out, errs = c.run("bbm", "finalize", "--progress", "bar", "CopyColumnUsingBackgroundMigrationJob", "events", "id", copyArgs)
	drawn = lastDrawn(errs)
	if code != 0 || !strings.Contains(out, "Done.") || !strings.HasPrefix(drawn, "100%") || !strings.Contains(drawn, "(20000/20000)") {
		t.Fatalf("finalize: exit %d, drawn %q\nstdout %s\nstderr %q", code, drawn, out, errs)
	}
	// The first draw starts where the migration was, with no rate yet.
	first := lastDrawn(strings.SplitN(errs, "\r", 3)[1])
	if !strings.Contains(first, "("+strconv.FormatInt(done, 10)+"/") || strings.Contains(first, "rows/s") {
		t.Fatalf("first draw %q, want %d rows and no rate", first, done)
	}
}
