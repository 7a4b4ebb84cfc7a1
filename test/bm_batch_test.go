package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// copyArgs are CopyColumn arguments over users for ids lo..hi.
func copyArgs(lo, hi int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`["users","legacy_id","id_big",%d,%d]`, lo, hi))
}

// CopyColumn jobs performed together: one transaction copies every range
// (overlapping ones too) and marks their tracking rows; a job that cannot
// run makes the whole run do nothing; jobs on different tables, or one
// job, are not combined.
func TestBMPerformBatchCopyColumn(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	classes := legacy.NewRegistry()
	legacy.AddCopyColumn(classes, legacy.CopyColumn{})
	r := &legacy.Runner{Registry: classes, DB: b.db}
	args := []json.RawMessage{copyArgs(1, 50), copyArgs(40, 100), copyArgs(150, 160)}
	if err := legacy.Track(b.ctx, b.db, "CopyColumn", args...); err != nil {
		t.Fatal(err)
	}
	bad := append(append([]json.RawMessage{}, args...), json.RawMessage(`["users","legacy_id","nope",101,110]`))
	if err := r.PerformBatch(b.ctx, "CopyColumn", bad); err == nil || b.copied(t) != 0 {
		t.Fatalf("with a missing column: %v, %d rows copied", err, b.copied(t))
	}
	if err := r.PerformBatch(b.ctx, "CopyColumn", args); err != nil {
		t.Fatal(err)
	}
	if got := b.copied(t); got != 111 {
		t.Fatalf("copied %d rows, want 111", got)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`); n != 0 {
		t.Fatalf("%d tracking rows still pending", n)
	}
	b.exec(t, `CREATE TABLE users2 (LIKE users)`)
	mixed := []json.RawMessage{copyArgs(1, 2), json.RawMessage(`["users2","legacy_id","id_big",1,2]`)}
	if err := r.PerformBatch(b.ctx, "CopyColumn", mixed); !errors.Is(err, legacy.ErrNotBatchable) {
		t.Fatalf("two tables: %v", err)
	}
	if err := r.PerformBatch(b.ctx, "CopyColumn", args[:1]); !errors.Is(err, legacy.ErrNotBatchable) {
		t.Fatalf("one job: %v", err)
	}
	b.exec(t, `DROP TABLE background_migration_jobs`)
	b.exec(t, `UPDATE users SET id_big = NULL`)
	if err := r.PerformBatch(b.ctx, "CopyColumn", args); err != nil || b.copied(t) != 111 {
		t.Fatalf("without a tracking table: %v, %d rows", err, b.copied(t))
	}
}

// A steal of many small jobs performs them in runs; one bad job among
// them (with --keep-going) goes back alone, every other range is copied
// and its tracking row marked, each job once.
func TestBMStealRunsWithABadJob(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	var args []json.RawMessage
	for lo := 1; lo <= 200; lo += 2 {
		args = append(args, copyArgs(lo, lo+1))
	}
	if _, err := legacy.Schedule(b.ctx, sidekiq.NewClient(b.rdb), b.db, "CopyColumn", args,
		legacy.ScheduleOptions{Interval: time.Minute, Track: true}); err != nil {
		t.Fatal(err)
	}
	badJob := `{"retry":3,"queue":"background_migration","class":"BackgroundMigrationWorker","args":["CopyColumn",["users","legacy_id","nope",1,2]],"jid":"bad1","created_at":1795272961.5,"enqueued_at":1795272961.5}`
	if err := b.rdb.LPush(b.ctx, "queue:background_migration", badJob).Err(); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--keep-going", "--concurrency", "2")
	if code != 1 || !strings.Contains(out, "performed 100 jobs") || !strings.Contains(out, "1 pushed back") {
		t.Fatalf("steal: exit %d\n%s\n%s", code, out, stderr)
	}
	if b.copied(t) != 200 || b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`) != 0 {
		t.Fatalf("copied %d, pending %d", b.copied(t), b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`))
	}
	left, _ := b.rdb.LRange(b.ctx, "queue:background_migration", 0, -1).Result()
	if len(left) != 1 || left[0] != badJob || b.rdb.ZCard(b.ctx, "schedule").Val() != 0 {
		t.Fatalf("left: queue %q, %d scheduled", left, b.rdb.ZCard(b.ctx, "schedule").Val())
	}
}
