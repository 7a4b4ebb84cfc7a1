package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/worker"
)

// Jobs enqueued by Ruby Sidekiq (perform_async, perform_in, push_bulk) are
// run by a ferry worker through the lease, and mark their tracking rows.
func TestBMRubyJobsRunByFerryWorker(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	var tracked []json.RawMessage
	for lo := 1; lo <= 200; lo += 50 {
		// Spaces differ from Ruby's encoding on purpose: rows match as jsonb.
		tracked = append(tracked, json.RawMessage(fmt.Sprintf(`["users", "legacy_id", "id_big", %d, %d]`, lo, lo+49)))
	}
	if err := legacy.Track(b.ctx, b.db, "CopyColumn", tracked...); err != nil {
		t.Fatal(err)
	}
	b.ruby(t, `
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 50]])
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 51, 100]], at: Time.now.to_f + 1)
Sidekiq::Client.push_bulk('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration',
  'args' => [['CopyColumn', ['users', 'legacy_id', 'id_big', 101, 150]], ['CopyColumn', ['users', 'legacy_id', 'id_big', 151, 200]]])
`)
	reg := worker.NewRegistry()
	classes := legacy.NewRegistry()
	legacy.AddCopyColumn(classes, legacy.CopyColumn{})
	log := zaptest.NewLogger(t)
	// Jobs of one class run one at a time, each as soon as the previous ends.
	if err := legacy.AddWorker(reg, legacy.WorkerConfig{
		Runner: &legacy.Runner{Registry: classes, DB: b.db, Logger: log},
		Client: sidekiq.NewClient(b.rdb), Redis: b.rdb, Logger: log,
	}); err != nil {
		t.Fatal(err)
	}
	rt, err := worker.New(worker.Config{Redis: b.rdb, Registry: reg, Concurrency: 4,
		PollInterval: 100 * time.Millisecond, Timeout: new(5 * time.Second), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	testenv.Eventually(t, 30*time.Second, "all 200 rows copied and tracked", func() bool {
		return b.copied(t) == 200 &&
			b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 1`) == 4
	})
}

// `ferry bm remaining` agrees with Sidekiq's own API, over the queues
// background_migration and default unless --queue narrows.
func TestBMRemainingMatchesSidekiq(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `
30.times { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', i, i]]) }
20.times { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', i, i]], at: Time.now.to_f + 3600 + i) }
Sidekiq::Client.push_bulk('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration',
  'args' => (1..7).map { |i| ['OtherMigration', [i]] })
5.times { |i| Sidekiq::Client.push('class' => 'HardWorker', 'queue' => 'background_migration', 'args' => ['CopyColumn', i]) }
Sidekiq::Client.push('class' => 'BackgroundMigrationWorker', 'queue' => 'default', 'args' => ['CopyColumn', [1]])
`)
	sidekiq := b.ruby(t, `
counts = Hash.new(0)
%w[background_migration default].each { |q| Sidekiq::Queue.new(q).each { |j| counts[j.args[0]] += 1 if j.klass == 'BackgroundMigrationWorker' } }
Sidekiq::ScheduledSet.new.each { |j| counts[j.args[0]] += 1 if j.klass == 'BackgroundMigrationWorker' }
puts JSON.generate(counts)
`)
	var want map[string]int
	if err := json.Unmarshal([]byte(sidekiq), &want); err != nil {
		t.Fatal(sidekiq, err)
	}
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "remaining", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Remaining int `json:"remaining"`
		Classes   []struct {
			Class     string `json:"class"`
			Queue     int    `json:"queue"`
			Scheduled int    `json:"scheduled"`
			Remaining int    `json:"remaining"`
		} `json:"classes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(out, err)
	}
	gotMap := map[string]int{}
	for _, c := range got.Classes {
		gotMap[c.Class] = c.Remaining
	}
	if fmt.Sprint(gotMap) != fmt.Sprint(want) || want["CopyColumn"] != 51 || got.Remaining != 58 {
		t.Fatalf("ferry %v (total %d), sidekiq %v", gotMap, got.Remaining, want)
	}
	code, out, stderr = b.ferry(t, cli.Options{}, "bm", "remaining")
	if code != 0 || !strings.Contains(out, "CopyColumn") || !strings.Contains(out, "58") ||
		!strings.Contains(stderr, "1 job(s) wait in queue default") {
		t.Fatalf("text output (exit %d):\n%s\n%s", code, out, stderr)
	}
	code, out, _ = b.ferry(t, cli.Options{}, "bm", "remaining", "--queue", "background_migration")
	if code != 0 || !strings.Contains(out, "57") || strings.Contains(out, "58") {
		t.Fatalf("--queue background_migration (exit %d):\n%s", code, out)
	}
	// Jobs that failed are not remaining (GitLab's count), but the
	// operator is told they are there and how to run them.
	b.ruby(t, `
job = {'class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'args' => ['FailedOne', [1]],
  'jid' => SecureRandom.hex(12), 'created_at' => Time.now.to_f, 'retry_count' => 0, 'error_message' => 'boom'}
Sidekiq.redis { |r| r.zadd('retry', Time.now.to_f + 60, JSON.generate(job)) }
`)
	code, out, stderr = b.ferry(t, cli.Options{}, "bm", "remaining")
	if code != 0 || strings.Contains(out, "FailedOne") ||
		!strings.Contains(stderr, "FailedOne: 1 job(s) in the retry and dead sets, not counted as remaining: `ferry bm remaining --retry-dead` lists them, `ferry bm steal FailedOne --retry-dead` runs them") {
		t.Fatalf("with a job in the retry set (exit %d):\n%s\n%s", code, out, stderr)
	}
	if _, _, stderr = b.ferry(t, cli.Options{}, "bm", "remaining", "--retry-dead"); strings.Contains(stderr, "not counted") {
		t.Fatalf("--retry-dead lists them; no note needed:\n%s", stderr)
	}
}

// `ferry bm steal` drains Ruby-enqueued jobs of one class and leaves the rest.
func TestBMStealRubyJobs(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `
Sidekiq::Client.push_bulk('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration',
  'args' => (0...50).map { |i| ['CopyColumn', ['users', 'legacy_id', 'id_big', 2*i + 1, 2*i + 2]] })
(50...100).each { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 2*i + 1, 2*i + 2]], at: Time.now.to_f + 3600) }
bm_push(['OtherMigration', [1]])
bm_push(['OtherMigration', [2]], at: Time.now.to_f + 60)
Sidekiq::Client.push('class' => 'HardWorker', 'queue' => 'background_migration', 'args' => ['CopyColumn'])
`)
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, `"performed": 100`) {
		t.Fatalf("output: %s", out)
	}
	if n := b.copied(t); n != 200 {
		t.Fatalf("copied %d rows", n)
	}
	left := b.ruby(t, `
q = Sidekiq::Queue.new('background_migration').map { |j| "#{j.klass}:#{j.args[0]}" }.sort
s = Sidekiq::ScheduledSet.new.map { |j| "#{j.klass}:#{j.args[0]}" }
puts JSON.generate([q, s])`)
	if left != `[["BackgroundMigrationWorker:OtherMigration","HardWorker:CopyColumn"],["BackgroundMigrationWorker:OtherMigration"]]` {
		t.Fatalf("left in Sidekiq: %s", left)
	}
}

// A failing job is pushed back where it was (scheduled, same time and jid)
// and the command exits 1 with the reason. The scheduled set goes first
// (GitLab's order), so the queued job was not run and is still queued.
func TestBMStealFailurePushedBack(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	before := b.ruby(t, `
bm_push(['CopyColumn', ['users', 'legacy_id', 'no_such_column', 1, 10]], at: 4102444800.25)
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 10]])
j = Sidekiq::ScheduledSet.new.first
puts "#{j.jid} #{j.score}"`)
	code, _, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn")
	if code != 1 || !strings.Contains(stderr, `column "no_such_column" does not exist in table users`) ||
		!strings.Contains(stderr, "pushed back") {
		t.Fatalf("exit %d, stderr: %s", code, stderr)
	}
	// The error is the first line an operator reads (CONTRACT.md).
	if !strings.HasPrefix(stderr, "ferry: steal CopyColumn: ") {
		t.Fatalf("stderr does not start with the error:\n%s", stderr)
	}
	after := b.ruby(t, `
j = Sidekiq::ScheduledSet.new.first
puts "#{j.jid} #{j.score}"
puts Sidekiq::Queue.new('background_migration').size`)
	if after != before+"\n1" {
		t.Fatalf("after: %q, before: %q", after, before)
	}
	if b.copied(t) != 0 {
		t.Fatalf("copied %d rows, want 0 (the failure stops the steal before the queued job)", b.copied(t))
	}
}

// --retry-dead also drains the retry and dead sets; without it they stay.
func TestBMStealRetryDead(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `
now = Time.now.to_f
Sidekiq.redis do |c|
  c.zadd('retry', now + 30, JSON.generate('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'jid' => 'r1',
    'args' => ['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 100]], 'retry_count' => 0, 'error_class' => 'PG::Error'))
  c.zadd('dead', now, JSON.generate('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'jid' => 'd1',
    'args' => ['CopyColumn', ['users', 'legacy_id', 'id_big', 101, 200]], 'retry_count' => 3, 'error_class' => 'PG::Error'))
end`)
	if code, _, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn"); code != 0 || b.copied(t) != 0 {
		t.Fatalf("without --retry-dead: exit %d, %d copied: %s", code, b.copied(t), stderr)
	}
	code, out, stderr := b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--retry-dead")
	if code != 0 || b.copied(t) != 200 || !strings.Contains(out, "retry 1, dead 1") {
		t.Fatalf("exit %d, %d copied: %s %s", code, b.copied(t), out, stderr)
	}
	if n := b.rdb.ZCard(b.ctx, "retry").Val() + b.rdb.ZCard(b.ctx, "dead").Val(); n != 0 {
		t.Fatalf("%d left in retry/dead", n)
	}
}

type bmCountArgs struct{ N int64 }

func (bmCountArgs) Kind() string { return "CountPerform" }

// Several steals at once never run a job twice: every perform is a row.
func TestBMConcurrentStealsNeverDoubleRun(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.exec(t, `CREATE TABLE performs (n bigint NOT NULL)`)
	const n = 3000
	var queued, scheduled []json.RawMessage
	for i := range n {
		a := json.RawMessage(fmt.Sprintf(`["CountPerform",[%d]]`, i))
		if i%2 == 0 {
			queued = append(queued, a)
		} else {
			scheduled = append(scheduled, a)
		}
	}
	c := sidekiq.NewClient(b.rdb)
	if _, err := c.PushBulk(b.ctx, legacy.WorkerClass, queued, sidekiq.PushOptions{Queue: legacy.QueueName}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PushBulk(b.ctx, legacy.WorkerClass, scheduled, sidekiq.PushOptions{Queue: legacy.QueueName, At: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	opts := cli.Options{Register: func(r *cli.Registries) {
		legacy.Add(r.BM, legacy.PerformFunc[bmCountArgs](func(ctx context.Context, j *legacy.Job[bmCountArgs]) error {
			_, err := j.DB.Exec(ctx, `INSERT INTO performs VALUES ($1)`, j.Args.N)
			return err
		}))
	}}
	var wg sync.WaitGroup
	codes := make([]int, 5)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = b.ferry(t, opts, "bm", "steal", "CountPerform", "--concurrency", "4")
		}()
	}
	wg.Wait()
	if fmt.Sprint(codes) != "[0 0 0 0 0]" {
		t.Fatalf("exit codes %v", codes)
	}
	if total, distinct := b.int(t, `SELECT count(*) FROM performs`), b.int(t, `SELECT count(DISTINCT n) FROM performs`); total != n || distinct != n {
		t.Fatalf("%d performs of %d distinct jobs, want %d of %d", total, distinct, n, n)
	}
	if keys := b.rdb.Keys(b.ctx, "ferry:steal*").Val(); len(keys) != 0 {
		t.Fatalf("left behind: %v", keys)
	}
}

// CopyColumn copies exactly its range; hostile identifiers get a clear
// error (exit 2) and touch nothing.
func TestBMPerformCopyColumnAndHostileIdentifiers(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	code, _, stderr := b.ferry(t, cli.Options{}, "bm", "perform", "CopyColumn", `["users","legacy_id","id_big",10,20]`)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if n := b.int(t, `SELECT count(*) FROM users WHERE id_big IS NOT NULL`); n != 11 || b.copied(t) != 11 ||
		b.int(t, `SELECT min(id) + max(id) FROM users WHERE id_big IS NOT NULL`) != 30 {
		t.Fatalf("copied %d rows", n)
	}
	long := strings.Repeat("c", 64)
	for _, tc := range []struct{ args, want string }{
		{`["users; DROP TABLE x","legacy_id","id_big",1,200]`, `table "users; DROP TABLE x" is not a plain identifier`},
		{`["users","legacy_id","id_big\"; DROP TABLE x; --",1,200]`, `column "id_big\"; DROP TABLE x; --" is not a plain identifier`},
		{`["us'ers","legacy_id","id_big",1,200]`, `is not a plain identifier`},
		{`["users","legacy_id","` + long + `",1,200]`, `is 64 bytes long; PostgreSQL identifiers are at most 63 bytes`},
		{`["nosuch","legacy_id","id_big",1,200]`, `table "nosuch" does not exist`},
		{`["users","legacy_id","id_big","1",200]`, `bad arguments: argument 4 (StartID)`},
		{`["users","legacy_id","id_big",1]`, `expected 5 arguments, got 4`},
	} {
		code, _, stderr := b.ferry(t, cli.Options{}, "bm", "perform", "CopyColumn", tc.args)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", tc.args, code, stderr, tc.want)
		}
	}
	if code, _, stderr := b.ferry(t, cli.Options{}, "bm", "perform", "NoSuch", `[]`); code != 2 || !strings.Contains(stderr, "unknown background migration class") {
		t.Errorf("unknown class: exit %d %s", code, stderr)
	}
	if b.int(t, `SELECT count(*) FROM x`) != 1 || b.copied(t) != 11 {
		t.Fatal("a hostile argument changed data")
	}
	// Sub-batches copy the same exact range.
	b.exec(t, `UPDATE users SET id_big = NULL`)
	classes := legacy.NewRegistry()
	legacy.AddCopyColumn(classes, legacy.CopyColumn{SubBatchSize: 3})
	r := &legacy.Runner{Registry: classes, DB: b.db}
	if err := r.Perform(b.ctx, "CopyColumn", json.RawMessage(`["public.users","legacy_id","id_big",5,105]`)); err != nil {
		t.Fatal(err)
	}
	if b.copied(t) != 101 || b.int(t, `SELECT count(*) FROM users WHERE id_big IS NOT NULL AND id NOT BETWEEN 5 AND 105`) != 0 {
		t.Fatalf("sub-batches copied %d", b.copied(t))
	}
	err := r.Perform(b.ctx, "CopyColumn", json.RawMessage(`["users","legacy_id","id_big",9,1]`))
	if !errors.Is(err, legacy.ErrInvalidArgs) {
		t.Fatalf("reversed range: %v", err)
	}
}

// Tracking: scheduled jobs are recorded pending; `pending --perform` runs
// them; finalize drains Redis and deletes the succeeded rows.
func TestBMTrackingPendingAndFinalize(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	var args []json.RawMessage
	for lo := 1; lo <= 200; lo += 50 {
		args = append(args, json.RawMessage(fmt.Sprintf(`["users","legacy_id","id_big",%d,%d]`, lo, lo+49)))
	}
	jids, err := legacy.Schedule(b.ctx, sidekiq.NewClient(b.rdb), b.db, "CopyColumn", args,
		legacy.ScheduleOptions{Interval: 2 * time.Minute, Track: true})
	if err != nil || len(jids) != 4 {
		t.Fatal(jids, err)
	}
	code, out, _ := b.ferry(t, cli.Options{}, "bm", "pending", "--json")
	var pending []legacy.TrackedJob
	if code != 0 || json.Unmarshal([]byte(out), &pending) != nil || len(pending) != 4 || pending[0].Status != legacy.StatusPending {
		t.Fatalf("pending (exit %d): %s", code, out)
	}
	code, _, stderr := b.ferry(t, cli.Options{}, "bm", "pending", "--perform")
	if code != 0 || b.copied(t) != 200 {
		t.Fatalf("pending --perform: exit %d: %s", code, stderr)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`); n != 0 {
		t.Fatalf("%d still pending", n)
	}
	// The 4 jobs are still scheduled in Sidekiq: finalize steals them
	// (re-running is harmless) and deletes the succeeded rows.
	code, out, stderr = b.ferry(t, cli.Options{}, "bm", "finalize", "CopyColumn", "--delete-succeeded")
	if code != 0 || !strings.Contains(out, "performed 4 stolen jobs") {
		t.Fatalf("finalize exit %d: %s %s", code, out, stderr)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs`); n != 0 || b.rdb.ZCard(b.ctx, "schedule").Val() != 0 {
		t.Fatalf("%d tracking rows left", n)
	}
}

// pause/resume flip the switch the workers read.
func TestBMPauseResumeCLI(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if code, _, stderr := b.ferry(t, cli.Options{}, "bm", "pause", "--reason", "upgrade window"); code != 0 {
		t.Fatal(stderr)
	}
	p, err := legacy.PauseStatus(b.ctx, b.rdb)
	if err != nil || p == nil || p.Reason != "upgrade window" {
		t.Fatalf("%+v %v", p, err)
	}
	if code, out, _ := b.ferry(t, cli.Options{}, "bm", "remaining", "--json"); code != 0 || !strings.Contains(out, `"reason": "upgrade window"`) {
		t.Fatalf("remaining does not show the pause: %s", out)
	}
	if code, out, _ := b.ferry(t, cli.Options{}, "bm", "resume"); code != 0 || !strings.Contains(out, "resumed") {
		t.Fatal(out)
	}
	if p, _ := legacy.PauseStatus(b.ctx, b.rdb); p != nil {
		t.Fatal("still paused")
	}
}
