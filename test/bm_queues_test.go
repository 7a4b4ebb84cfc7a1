package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// `ferry enqueue BackgroundMigrationWorker` goes to background_migration
// (where workers look) unless --queue says otherwise; Ruby sees it there.
func TestBMEnqueueDefaultQueue(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	for _, args := range [][]string{
		{"enqueue", "BackgroundMigrationWorker", `["CopyColumn",["users","legacy_id","id_big",1,10]]`},
		{"enqueue", "BackgroundMigrationWorker", `["CopyColumn",["users","legacy_id","id_big",11,20]]`, "--queue", "default"},
		{"enqueue", "Ferry::Noop", `[]`},
	} {
		if code, _, stderr := b.ferry(t, cli.Options{}, args...); code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, stderr)
		}
	}
	got := b.ruby(t, `
puts [Sidekiq::Queue.new('background_migration').map(&:klass).sort, Sidekiq::Queue.new('default').map(&:klass).sort].to_json`)
	// Ferry::Noop goes where a plain `ferry worker` fetches, so that the
	// smoke test of a deployment runs.
	if got != `[["BackgroundMigrationWorker","Ferry::Noop"],["BackgroundMigrationWorker"]]` {
		t.Fatalf("queues: %s", got)
	}
}

// steal looks in background_migration and default by default, --queue
// narrows; --keep-going performs the good jobs, puts the bad one back
// where it came from and exits 1 with a summary.
func TestBMStealQueuesAndKeepGoing(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `
(0...30).each { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 2*i + 1, 2*i + 2]]) }
Sidekiq::Client.push('class' => 'BackgroundMigrationWorker', 'queue' => 'default', 'retry' => 3,
  'args' => ['CopyColumn', ['users', 'legacy_id', 'id_big', 61, 100]])
bm_push(['CopyColumn', ['users', 'legacy_id', 'no_such_column', 1, 2]], at: 1000000000.5)
(0...20).each { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 101 + 5*i, 105 + 5*i]], at: Time.now.to_f + 3600 + i) }
`)
	// GitLab's order: the scheduled set first, whose earliest job is the bad
	// one: it fails at once, and everything goes back.
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--queue", "background_migration", "--concurrency", "1")
	if code != 1 || b.copied(t) != 0 || b.rdb.LLen(b.ctx, "queue:default").Val() != 1 ||
		b.rdb.LLen(b.ctx, "queue:background_migration").Val() != 30 || b.rdb.ZCard(b.ctx, "schedule").Val() != 21 {
		t.Fatalf("--queue background_migration: exit %d, %d copied, %s %s", code, b.copied(t), out, stderr)
	}
	code, out, stderr = b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--concurrency", "8", "--keep-going", "--json")
	var res struct {
		Performed int `json:"performed"`
		Failed    []struct {
			JID, Source, Error string
		} `json:"failed"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if code != 1 || res.Performed != 51 || len(res.Failed) != 1 || res.Failed[0].Source != "schedule" ||
		!strings.Contains(res.Failed[0].Error, `column "no_such_column" does not exist`) {
		t.Fatalf("--keep-going: exit %d %+v %s", code, res, stderr)
	}
	if b.copied(t) != 200 {
		t.Fatalf("copied %d", b.copied(t))
	}
	left := b.ruby(t, `
s = Sidekiq::ScheduledSet.new.map { |j| [j.args[1][2], j.score] }
puts [s, Sidekiq::Queue.new('default').size, Sidekiq::Queue.new('background_migration').size].to_json`)
	if left != `[[["no_such_column",1000000000.5]],0,0]` {
		t.Fatalf("left: %s", left)
	}
	// The text form says what failed.
	_, out, _ = b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--keep-going")
	if !strings.Contains(out, "1 job(s) failed and were put back where they came from") || !strings.Contains(out, "no_such_column") {
		t.Fatalf("summary: %s", out)
	}
}

// A worker that does not consume `default` says at start that legacy
// migration jobs wait there.
func TestBMWorkerWarnsOfUnconsumedQueue(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `Sidekiq::Client.push('class' => 'BackgroundMigrationWorker', 'queue' => 'default', 'args' => ['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 2]])`)
	p := startFerryWorker(t, b.redisURL, "--database-url", b.dbURL)
	testenv.Eventually(t, 30*time.Second, "the warning", func() bool {
		return len(p.grep("wait in a queue this worker does not consume", 1)) == 1 && len(p.grep(`"queue":"default"`, 1)) == 1
	})
	// The worker is left to the cleanup's SIGKILL: a TERM this soon after
	// start trips over internal/batched's session heartbeat (reported).
	if n := b.rdb.LLen(b.ctx, "queue:default").Val(); n != 1 {
		t.Fatalf("default holds %d", n)
	}
}

// pending counts rows, shows classes ferry does not have apart, and
// --perform runs the others, then says what is left.
func TestBMPendingUnknownClasses(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if err := legacy.Track(b.ctx, b.db, "CopyColumn", json.RawMessage(`["users","legacy_id","id_big",1,10]`)); err != nil {
		t.Fatal(err)
	}
	if err := legacy.Track(b.ctx, b.db, "PopulateThings", json.RawMessage(`[1,100]`), json.RawMessage(`[101,200]`)); err != nil {
		t.Fatal(err)
	}
	b.ruby(t, `bm_push(['PopulateThings', [1, 100]])`)
	code, out, _ := b.ferry(t, cli.Options{}, "bm", "pending")
	if code != 0 || !strings.Contains(out, "3 pending tracking rows, 2 of classes this ferry does not have") ||
		!strings.Contains(out, "PopulateThings: 1") || !strings.Contains(out, "CopyColumn: 0") {
		t.Fatalf("pending (exit %d):\n%s", code, out)
	}
	known, unknown, _ := strings.Cut(out, "classes this ferry does not have (")
	if !strings.Contains(known, "CopyColumn") || strings.Contains(strings.Split(unknown, "jobs Sidekiq")[0], "CopyColumn") {
		t.Fatalf("not apart:\n%s", out)
	}
	code, out, _ = b.ferry(t, cli.Options{}, "bm", "pending", "--json")
	var rows []struct {
		Class string `json:"class_name"`
		Known bool   `json:"class_known"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 3 {
		t.Fatalf("pending --json (exit %d): %s", code, out)
	}
	for _, r := range rows {
		if r.Known != (r.Class == "CopyColumn") {
			t.Fatalf("pending --json: %s class_known %v: %s", r.Class, r.Known, out)
		}
	}
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "pending", "--perform")
	if code != 1 || !strings.Contains(out, "performed 1 pending job") || !strings.Contains(stderr, "PopulateThings (2)") || b.copied(t) != 10 {
		t.Fatalf("--perform: exit %d %s %s", code, out, stderr)
	}
}

// `bm mark` closes pending rows of a class ferry does not have, only with
// --yes, recording how, who and when; pending then has nothing left.
func TestBMMarkUnknownClass(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if err := legacy.Track(b.ctx, b.db, "PopulateThings", json.RawMessage(`[1,100]`), json.RawMessage(`[101,200]`)); err != nil {
		t.Fatal(err)
	}
	first := b.int(t, `SELECT min(id) FROM background_migration_jobs`)
	code, _, stderr := b.ferry(t, cli.Options{}, "bm", "mark", "PopulateThings")
	if code != 2 || !strings.Contains(stderr, "refusing without --yes: would mark 2 pending tracking row(s) of PopulateThings succeeded") ||
		b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`) != 2 {
		t.Fatalf("without --yes: exit %d %s", code, stderr)
	}
	if code, out, stderr := b.ferry(t, cli.Options{}, "bm", "mark", fmt.Sprint(first), "--yes", "--skip"); code != 0 || !strings.Contains(out, "marked 1 pending") {
		t.Fatalf("mark ID --skip: exit %d %s %s", code, out, stderr)
	}
	if code, out, stderr := b.ferry(t, cli.Options{}, "bm", "mark", "PopulateThings", "--yes"); code != 0 || !strings.Contains(out, "marked 1 pending") {
		t.Fatalf("mark CLASS: exit %d %s %s", code, out, stderr)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs
		WHERE status = 1 AND ferry_marked_by LIKE '%@%' AND ferry_marked_at IS NOT NULL
		  AND ferry_marked = CASE WHEN id = $1 THEN 'skipped' ELSE 'succeeded' END`, first); n != 2 {
		t.Fatalf("%d rows recorded as marked", n)
	}
	if code, out, _ := b.ferry(t, cli.Options{}, "bm", "pending"); code != 0 || !strings.Contains(out, "no pending") {
		t.Fatalf("pending after mark: %s", out)
	}
	if code, _, _ := b.ferry(t, cli.Options{}, "bm", "mark", "PopulateThings", "--yes"); code != 1 {
		t.Fatalf("nothing left to mark: exit %d", code)
	}
}

// A steal marks the tracking rows of the jobs it performs (GitLab's
// track_jobs), and skips the tracking UPDATE only for a class without
// pending rows.
func TestBMStealMarksTrackedJobs(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if err := legacy.Track(b.ctx, b.db, "CopyColumn", json.RawMessage(`["users","legacy_id","id_big",1,100]`),
		json.RawMessage(`["users","legacy_id","id_big",101,200]`)); err != nil {
		t.Fatal(err)
	}
	b.ruby(t, `
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 100]])
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 101, 200]], at: Time.now.to_f + 3600)`)
	if code, _, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn"); code != 0 {
		t.Fatalf("exit %d %s", code, stderr)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 1`); n != 2 || b.copied(t) != 200 {
		t.Fatalf("%d rows marked, %d copied", n, b.copied(t))
	}
}
