package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/cli"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// bmSpans makes every UPDATE of users record when it started and ended,
// by transaction, outside Redis, and take at least pauseMs, so that two
// jobs of a class running at once would overlap visibly.
func (b *bmBundle) bmSpans(t *testing.T, pauseMs int) {
	t.Helper()
	b.exec(t, fmt.Sprintf(`
		CREATE TABLE spans (xid bigint NOT NULL, what text NOT NULL, at timestamptz NOT NULL);
		CREATE FUNCTION span_start() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO spans VALUES (txid_current(), 'start', clock_timestamp());
			PERFORM pg_sleep(%g);
			RETURN NULL;
		END $$;
		CREATE FUNCTION span_end() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO spans VALUES (txid_current(), 'end', clock_timestamp());
			RETURN NULL;
		END $$;
		CREATE TRIGGER span_start BEFORE UPDATE ON users FOR EACH STATEMENT EXECUTE FUNCTION span_start();
		CREATE TRIGGER span_end AFTER UPDATE ON users FOR EACH STATEMENT EXECUTE FUNCTION span_end();`, float64(pauseMs)/1000))
}

// overlaps counts pairs of recorded jobs whose spans overlap.
func (b *bmBundle) overlaps(t *testing.T) int {
	return b.int(t, `
		WITH s AS (
			SELECT xid, min(at) FILTER (WHERE what = 'start') AS s, max(at) FILTER (WHERE what = 'end') AS e
			FROM spans GROUP BY xid)
		SELECT count(*) FROM s a JOIN s b ON a.xid < b.xid AND a.s < b.e AND b.s < a.e`)
}

// bmDrainSetup is bmSetup with spans recorded (bmSpans) and 100 jobs
// enqueued by Ruby (bmRubyJobs).
func bmDrainSetup(t *testing.T, pauseMs int) *bmBundle {
	t.Helper()
	b := bmSetup(t)
	b.bmSpans(t, pauseMs)
	b.bmRubyJobs(t)
	return b
}

// bmRubyJobs has Ruby enqueue one CopyColumn job per 2 ids of users, half
// queued (push_bulk), half scheduled a second ahead.
func (b *bmBundle) bmRubyJobs(t *testing.T) {
	t.Helper()
	b.ruby(t, `
Sidekiq::Client.push_bulk('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'retry' => 3,
  'args' => (0...50).map { |i| ['CopyColumn', ['users', 'legacy_id', 'id_big', 2*i + 1, 2*i + 2]] })
(50...100).each { |i| bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 2*i + 1, 2*i + 2]], at: Time.now.to_f + 1) }
`)
}

func (b *bmBundle) startWorkers(t *testing.T, n int, extra ...string) []*subproc {
	t.Helper()
	var ps []*subproc
	for range n {
		args := append([]string{"--database-url", b.dbURL, "--concurrency", "5", "--poll-interval", "1s"}, extra...)
		ps = append(ps, startFerryWorker(t, b.redisURL, args...))
	}
	return ps
}

// Three worker processes with per-class concurrency 1 drain 100
// Ruby-enqueued jobs of one class without ever running two at once: each
// job's span, recorded by PostgreSQL, ends before the next begins.
func TestBMWorkersNeverOverlapAClass(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 5)
	ps := b.startWorkers(t, 3)
	testenv.Eventually(t, 90*time.Second, "all 200 rows copied", func() bool {
		for _, p := range ps {
			if p.exited() {
				t.Fatalf("worker exited: %s", p.state())
			}
		}
		return b.copied(t) == 200
	})
	if n := b.int(t, `SELECT count(DISTINCT xid) FROM spans`); n < 100 {
		t.Fatalf("%d spans recorded for 100 jobs", n)
	}
	if n := b.overlaps(t); n != 0 {
		t.Fatalf("%d pairs of CopyColumn jobs ran at once with bm.concurrency 1", n)
	}
}

// With --bm-concurrency 3 jobs of a class do run side by side (the
// overlap check above can see overlaps).
func TestBMWorkersClassConcurrency(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 50)
	b.startWorkers(t, 3, "--bm-concurrency", "3")
	testenv.Eventually(t, 90*time.Second, "all 200 rows copied", func() bool { return b.copied(t) == 200 })
	if n := b.overlaps(t); n == 0 {
		t.Fatal("no two jobs ever ran at once with bm.concurrency 3")
	}
}

// A worker SIGKILLed while it runs legacy jobs loses none: its jobs come
// back (worker recovery), its running slot lapses, and the others finish.
func TestBMWorkerSigkillLosesNoJob(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 20)
	ps := b.startWorkers(t, 3)
	testenv.Eventually(t, 60*time.Second, "some jobs done", func() bool { return b.copied(t) >= 20 })
	ps[0].killGroup()
	ps[0].waitExit(t, 10*time.Second)
	// Recovery waits for the dead worker's 20 s liveness key and a 10 s
	// grace; its slot lapses after 30 s.
	testenv.Eventually(t, 150*time.Second, "all 200 rows copied after the kill", func() bool {
		return b.copied(t) == 200
	})
	testenv.Eventually(t, 30*time.Second, "queue, schedule and private lists empty", func() bool {
		return b.rdb.LLen(b.ctx, "queue:background_migration").Val() == 0 && b.rdb.ZCard(b.ctx, "schedule").Val() == 0 &&
			len(privateLists(b.ctx, t, b.rdb)) == 0
	})
	if n := b.rdb.ZCard(b.ctx, "dead").Val() + b.rdb.ZCard(b.ctx, "retry").Val(); n != 0 {
		t.Fatalf("%d jobs failed", n)
	}
}

// Bad jobs fail at once, to the dead set with a clear error, even while
// good jobs of the class keep its running slot busy.
func TestBMWorkerBadJobsDeadAtOnce(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 20)
	b.ruby(t, `
bm_push(['CopyColumn', ['victim']])
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 'one', 2]])
bm_push(['CopyColumn', ['users; DROP TABLE x', 'legacy_id', 'id_big', 1, 2]])
Sidekiq::Client.push('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'retry' => 0, 'args' => ['CopyColumn', 'notarray'])
`)
	b.startWorkers(t, 1)
	testenv.Eventually(t, 30*time.Second, "4 bad jobs in the dead set", func() bool {
		return b.rdb.ZCard(b.ctx, "dead").Val() == 4
	})
	dead := strings.Join(b.rdb.ZRange(b.ctx, "dead", 0, -1).Val(), "\n")
	for _, want := range []string{"expected 5 arguments, got 1", `argument 4 (StartID)`, `is not a plain identifier`, "ArgumentError"} {
		if !strings.Contains(dead, want) {
			t.Errorf("dead set lacks %q:\n%s", want, dead)
		}
	}
	if b.int(t, `SELECT count(*) FROM x`) != 1 {
		t.Fatal("a hostile job touched data")
	}
	testenv.Eventually(t, 90*time.Second, "the good jobs all ran", func() bool { return b.copied(t) == 200 })
}

// While an application uses the database, legacy jobs are paced on the
// clock batched migrations share, and `bm remaining` says so; once the
// application is quiet they run at full speed and the drain finishes.
func TestBMWorkersPacedWhileTheAppWorks(t *testing.T) {
	t.Parallel()
	if testenv.ViaPgBouncer() {
		t.Skip("tells sessions apart by application_name; behind PgBouncer a server connection may carry another client's (README: PgBouncer)")
	}
	b := bmDrainSetup(t, 5)
	app, err := pgxpool.New(b.ctx, b.dbURL) // no "ferry" in its application_name: an application
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	stopApp := testenv.AppLoad(b.ctx, app, 4)
	defer stopApp()
	b.startWorkers(t, 1)
	testenv.Eventually(t, 60*time.Second, "the pacing reason", func() bool {
		_, _, stderr := b.ferry(t, cli.Options{}, "bm", "remaining")
		return strings.Contains(stderr, "workers hold legacy migrations back: paced: contention: other sessions are using the database")
	})
	if b.copied(t) == 200 {
		t.Fatal("drained at once although paced")
	}
	stopApp()
	testenv.Eventually(t, 90*time.Second, "all 200 rows copied once the application is quiet", func() bool { return b.copied(t) == 200 })
}
