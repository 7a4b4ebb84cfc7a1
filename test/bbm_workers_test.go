package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

var (
	bbmBuildOnce sync.Once
	bbmBinPath   string
	bbmBuildErr  error
)

func bbmFerryBinary(t *testing.T) string {
	t.Helper()
	bbmBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-bbm-test")
		if err != nil {
			bbmBuildErr = err
			return
		}
		bbmBinPath = filepath.Join(dir, "ferry")
		out, err := exec.Command("go", "build", "-o", bbmBinPath, "../cmd/ferry").CombinedOutput()
		if err != nil {
			bbmBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bbmBuildErr != nil {
		t.Fatal(bbmBuildErr)
	}
	return bbmBinPath
}

// bbmProcessEnv gives a worker-process test the ferry binary, fresh Redis
// and PostgreSQL URLs, its context and a pool (closed at cleanup).
func bbmProcessEnv(t *testing.T) (bin, redisURL, dbURL string, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	bin, redisURL, dbURL, ctx = bbmFerryBinary(t), testenv.RedisURL(t), testenv.DatabaseURL(t), testenv.Context(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return bin, redisURL, dbURL, ctx, pool
}

// countingTable creates name with rows rows whose trigger counts the
// copies of each row (exactly once: copies = 1) and slows every 500th
// row, so a migration of it is still running a few seconds in.
func countingTable(ctx context.Context, t *testing.T, pool *pgxpool.Pool, name string, rows int) {
	t.Helper()
	if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %[1]s (id int PRIMARY KEY, v int NOT NULL, v_big bigint, copies int NOT NULL DEFAULT 0);
		INSERT INTO %[1]s SELECT g, g FROM generate_series(1, %[2]d) g; ANALYZE %[1]s;
		CREATE FUNCTION %[1]s_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			IF NEW.v_big IS DISTINCT FROM OLD.v_big THEN NEW.copies := OLD.copies + 1; END IF;
			IF NEW.id %% 500 = 0 THEN PERFORM pg_sleep(0.01); END IF;
			RETURN NEW; END $$;
		CREATE TRIGGER %[1]s_count BEFORE UPDATE ON %[1]s FOR EACH ROW EXECUTE FUNCTION %[1]s_count()`, name, rows)); err != nil {
		t.Fatal(err)
	}
}

// slowCountingTable is a countingTable whose updates also sleep 5 ms
// every 50 rows: about 1 s per 10,000 rows copied.
func slowCountingTable(ctx context.Context, t *testing.T, pool *pgxpool.Pool, name string, rows int) {
	t.Helper()
	countingTable(ctx, t, pool, name, rows)
	if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE FUNCTION %[1]s_slow() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id %% 50 = 0 THEN PERFORM pg_sleep(0.005); END IF; RETURN NEW; END $$;
		CREATE TRIGGER %[1]s_slow BEFORE UPDATE ON %[1]s FOR EACH ROW EXECUTE FUNCTION %[1]s_slow()`, name)); err != nil {
		t.Fatal(err)
	}
}

// copiedOnce fails the test unless every row of a countingTable was copied
// exactly once.
func copiedOnce(ctx context.Context, t *testing.T, pool *pgxpool.Pool, name string) {
	t.Helper()
	var bad, twice int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE v_big IS DISTINCT FROM v), count(*) FILTER (WHERE copies > 1) FROM `+name).Scan(&bad, &twice); err != nil {
		t.Fatal(err)
	}
	if bad != 0 || twice != 0 {
		t.Fatalf("%s: %d rows not copied, %d copied more than once", name, bad, twice)
	}
}

type bbmProc struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func bbmStartWorker(t *testing.T, bin, redisURL, dbURL string, flags ...string) *bbmProc {
	t.Helper()
	// Later flags win: flags may override the defaults here.
	p := &bbmProc{cmd: exec.Command(bin, append([]string{"worker", "--concurrency", "4", "--timeout", "5s", "--log-level", "warn"}, flags...)...)}
	p.cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = p.cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("worker %d output:\n%s", p.cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// Three `ferry worker` processes run four migrations (parallel 2 each,
// max-running 2): the limit holds (sampled), a migration starts within
// seconds of being queued, one worker is SIGKILLed mid-way, and every
// table ends copied exactly (checksums).
func TestBBMThroughWorkerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs worker processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ferry %v: %v\n%s", args, err, out)
		}
	}
	run("setup")
	const tables, rows = 4, 60000
	for i := range tables {
		if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE w%d (id int PRIMARY KEY, v int NOT NULL, v_big bigint);
			INSERT INTO w%d SELECT g * 2, g FROM generate_series(1, %d) g; ANALYZE w%d;
			CREATE FUNCTION slow%d() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id %% 2000 = 0 THEN PERFORM pg_sleep(0.005); END IF; RETURN NEW; END $$;
			CREATE TRIGGER slow BEFORE UPDATE ON w%d FOR EACH ROW EXECUTE FUNCTION slow%d()`, i, i, rows, i, i, i, i)); err != nil {
			t.Fatal(err)
		}
	}
	var workers []*bbmProc
	for range 3 {
		workers = append(workers, bbmStartWorker(t, bin, redisURL, dbURL))
	}
	queued := time.Now()
	for i := range tables {
		run("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", fmt.Sprintf("w%d", i), "id", `[["v"],["v_big"]]`,
			"--parallel", "2", "--batch-size", "2000", "--target-batch-duration", "300ms")
	}
	testenv.Eventually(t, 10*time.Second, "first batch", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs`).Scan(&n)
		return n > 0
	})
	t.Logf("first batch %s after queueing", time.Since(queued).Round(time.Millisecond))

	var maxSeen atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var n int64
			if err := pool.QueryRow(ctx, `SELECT count(DISTINCT batched_background_migration_id) FROM batched_background_migration_jobs WHERE status = 1`).Scan(&n); err == nil && n > maxSeen.Load() {
				maxSeen.Store(n)
			}
		}
	}()
	// SIGKILL one worker while batches run.
	testenv.Eventually(t, 30*time.Second, "some progress", func() bool {
		var n int64
		_ = pool.QueryRow(ctx, `SELECT coalesce(sum(rows_done), 0) FROM batched_background_migration_jobs`).Scan(&n)
		return n > rows/2
	})
	_ = workers[0].cmd.Process.Kill()
	_ = workers[0].cmd.Wait()
	testenv.Eventually(t, 90*time.Second, "all migrations finished", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migrations WHERE status NOT IN (3, 6)`).Scan(&n)
		return n == 0
	})
	close(stop)
	wg.Wait()
	if maxSeen.Load() > 2 {
		t.Fatalf("max-running 2 exceeded: %d", maxSeen.Load())
	}
	for i := range tables {
		var bad int64
		var s1, s2 int64
		if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FILTER (WHERE v_big IS DISTINCT FROM v), sum(v), sum(v_big) FROM w%d`, i)).Scan(&bad, &s1, &s2); err != nil {
			t.Fatal(err)
		}
		if bad != 0 || s1 != s2 {
			t.Fatalf("w%d: %d rows not copied, checksum %d vs %d", i, bad, s1, s2)
		}
	}
	var failed int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migrations WHERE status <> 3`).Scan(&failed)
	if failed != 0 {
		t.Fatalf("%d migrations not finished", failed)
	}
	var died int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'Ferry::WorkerDied'`).Scan(&died)
	t.Logf("max running seen %d, batches rescued from the killed worker: %d", maxSeen.Load(), died)
}

// bbmCLI is the environment of ferry processes on the test's Redis and
// database, and a runner of the binary's commands (combined output, exit
// code), after `ferry setup`.
func bbmCLI(t *testing.T, bin, redisURL, dbURL string) ([]string, func(args ...string) (string, int)) {
	t.Helper()
	env := childEnv("REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	ferry := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("ferry %v: %v", args, err)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := ferry("setup"); code != 0 {
		t.Fatalf("setup: %d %s", code, out)
	}
	return env, ferry
}

// queueCountingCopy queues the copy of a countingTable's v into v_big with
// the given flags and returns its configuration arguments and id.
func queueCountingCopy(ctx context.Context, t *testing.T, ferry func(...string) (string, int), pool *pgxpool.Pool, table string, flags ...string) ([]string, int64) {
	t.Helper()
	args := []string{"CopyColumnUsingBackgroundMigrationJob", table, "id", `[["v"],["v_big"]]`}
	if out, code := ferry(append(append([]string{"bbm", "queue"}, args...), flags...)...); code != 0 {
		t.Fatalf("queue: %d %s", code, out)
	}
	var id int64
	if err := pool.QueryRow(ctx, `SELECT id FROM batched_background_migrations WHERE table_name = $1`, table).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return args, id
}

// A `ferry bbm finalize` killed with SIGKILL (a dropped SSH session) does
// not strand its migration in finalizing: `show` says its finalizer is
// gone, a worker makes it active again and finishes it, every row copied
// exactly once.
func TestBBMFinalizeKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs ferry processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	env, ferry := bbmCLI(t, bin, redisURL, dbURL)
	// A trigger slows every 500th row, so the finalize is still running
	// when it is killed.
	const rows = 40000
	countingTable(ctx, t, pool, "fk", rows)
	args, id := queueCountingCopy(ctx, t, ferry, pool, "fk", "--batch-size", "2000", "--target-batch-duration", "300ms")
	fin := startProc(t, "ferry bbm finalize", env, bin, append([]string{"bbm", "finalize"}, args...)...)
	testenv.Eventually(t, 30*time.Second, "finalize under way", func() bool {
		var n int64
		_ = pool.QueryRow(ctx, `SELECT coalesce(sum(rows_done), 0) FROM batched_background_migration_jobs
			WHERE batched_background_migration_id = $1 AND EXISTS (SELECT 1 FROM batched_background_migrations WHERE id = $1 AND status = 5)`, id).Scan(&n)
		return n > 0
	})
	fin.killGroup()
	<-fin.done

	// No worker yet: the migration is still finalizing, and show says why
	// nothing moves and what to do.
	idStr := fmt.Sprint(id)
	testenv.Eventually(t, 30*time.Second, "show names the gone finalizer", func() bool {
		out, code := ferry("bbm", "show", idStr)
		return code == 0 && strings.Contains(out, "finalize process is gone") && strings.Contains(out, "ferry bbm resume "+idStr)
	})
	w := bbmStartWorker(t, bin, redisURL, dbURL)
	testenv.Eventually(t, 90*time.Second, "finished by the worker", func() bool {
		var s int
		_ = pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&s)
		return s == 3
	})
	copiedOnce(ctx, t, pool, "fk")
	// Stopped first: its output buffer is written until it exits.
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	_ = w.cmd.Wait()
	if !strings.Contains(w.out.String(), "its process is gone") {
		t.Logf("worker output:\n%s", w.out.String())
		t.Fatal("the worker did not log that it took the migration back")
	}
}

// When the only worker is SIGKILLed mid-batch, a worker started after it
// takes the batch over (the dead worker's lane is reopened, not left to
// expire) and the migration finishes with every row copied exactly once.
func TestBBMOnlyWorkerKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs worker processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	const rows = 40000
	countingTable(ctx, t, pool, "ok1", rows)
	first := bbmStartWorker(t, bin, redisURL, dbURL)
	cmd := exec.Command(bin, "bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "ok1", "id", `[["v"],["v_big"]]`,
		"--batch-size", "2000", "--target-batch-duration", "2s")
	cmd.Env = childEnv("REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("queue: %v\n%s", err, out)
	}
	done := func() int64 {
		var n int64
		_ = pool.QueryRow(ctx, `SELECT coalesce(sum(rows_done), 0) FROM batched_background_migration_jobs`).Scan(&n)
		return n
	}
	testenv.Eventually(t, 30*time.Second, "a batch under way", func() bool {
		var running int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE status = 1 AND rows_done > 0`).Scan(&running)
		return running > 0
	})
	_ = first.cmd.Process.Kill()
	_ = first.cmd.Wait()
	killed, at := time.Now(), done()
	// Until a worker runs, show says its batch's worker is gone, with no
	// rate or ETA, rather than "running".
	testenv.Eventually(t, 30*time.Second, "show says the batch's worker stopped", func() bool {
		cmd := exec.Command(bin, "bbm", "show", "CopyColumnUsingBackgroundMigrationJob", "ok1", "id", `[["v"],["v_big"]]`)
		cmd.Env = childEnv("REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
		out, _ := cmd.CombinedOutput()
		return strings.Contains(string(out), "the worker running its batch stopped") && strings.Contains(string(out), "start one (`ferry worker`)") &&
			!strings.Contains(string(out), "ETA")
	})
	bbmStartWorker(t, bin, redisURL, dbURL)
	testenv.Eventually(t, 90*time.Second, "progress after the kill", func() bool { return done() > at })
	t.Logf("rows moved again %s after the only worker was killed", time.Since(killed).Round(100*time.Millisecond))
	testenv.Eventually(t, 90*time.Second, "finished", func() bool {
		var s int
		_ = pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE table_name = 'ok1'`).Scan(&s)
		return s == 3
	})
	copiedOnce(ctx, t, pool, "ok1")
	var died int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'Ferry::WorkerDied'`).Scan(&died)
	if died == 0 {
		t.Fatal("no batch of the killed worker was rescued")
	}
}

// A worker stopped with TERM in the middle of a batch keeps its engine's
// session until its jobs have returned: the batch finishes or is handed
// back by the worker itself, never taken for a dead worker's (which would
// use one of its three attempts at every rolling restart).
func TestBBMWorkerTermKeepsItsSession(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	// Slow enough that a batch still runs for seconds after TERM.
	slowCountingTable(ctx, t, pool, "termed", 60000)
	w1 := bbmStartWorker(t, bin, redisURL, dbURL)
	bbmStartWorker(t, bin, redisURL, dbURL)
	// Both settled: a worker judges others only after 5 s of its own
	// heartbeats, and the bug this guards against needs a judge.
	testenv.Eventually(t, 30*time.Second, "two settled workers", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM ferry_bbm_sessions WHERE started_at < now() - interval '6 seconds'`).Scan(&n)
		return n >= 2
	})
	cmd := exec.CommandContext(ctx, bin, "bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "termed", "id", `[["v"],["v_big"]]`,
		"--batch-size", "20000", "--target-batch-duration", "5s")
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bbm queue: %v\n%s", err, out)
	}
	testenv.Eventually(t, 60*time.Second, "a batch under way", func() bool {
		var n int64
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE status = 1 AND cursor_value IS NOT NULL`).Scan(&n)
		return n > 0
	})
	_ = w1.cmd.Process.Signal(syscall.SIGTERM)
	_ = w1.cmd.Wait()
	testenv.Eventually(t, 90*time.Second, "finished", func() bool {
		var s int
		_ = pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE table_name = 'termed'`).Scan(&s)
		return s == 3
	})
	copiedOnce(ctx, t, pool, "termed")
	var died int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'Ferry::WorkerDied'`).Scan(&died); err != nil || died != 0 {
		t.Fatalf("%d batches of a worker stopped with TERM were taken for a dead worker's (%v)", died, err)
	}
}

// TERM ends a running batch at its next sub-batch boundary, long before the
// shutdown timeout: the part done is recorded as done, the rest is left for
// later, no attempt is used and the batch size stays (a stop is not the
// table's fault). Before, the batch ran on until the hard stop at --timeout.
func TestBBMWorkerTermYieldsAtSubBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	// With a second's pause after each sub-batch (they grow to about a
	// second), one batch of every row runs for about 25 s.
	slowCountingTable(ctx, t, pool, "yielded", 100000)
	_, ferry := bbmCLI(t, bin, redisURL, dbURL)
	_, id := queueCountingCopy(ctx, t, ferry, pool, "yielded", "--batch-size", "100000", "--sub-batch-size", "100",
		"--pause-ms", "1000", "--target-batch-duration", "10m")
	w := bbmStartWorker(t, bin, redisURL, dbURL, "--timeout", "10m")
	var jobID, maxValue int64
	testenv.Eventually(t, 60*time.Second, "a batch under way", func() bool {
		return pool.QueryRow(ctx, `SELECT id, max_value FROM batched_background_migration_jobs
			WHERE batched_background_migration_id = $1 AND status = 1 AND cursor_value IS NOT NULL`, id).Scan(&jobID, &maxValue) == nil
	})
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- w.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("worker exited with %v\n%s", err, w.out.String())
		}
	case <-time.After(60 * time.Second):
		_ = w.cmd.Process.Kill()
		<-exited // the output is complete, and the cleanup finds it stopped
		t.Fatalf("a worker stopped with TERM and a 10m timeout was still running a minute later: the batch did not yield\n%s", w.out.String())
	}
	if regexp.MustCompile(`Pushed \d+ jobs back to Redis`).MatchString(w.out.String()) {
		t.Errorf("the batch was pushed back by a hard stop instead of yielding:\n%s", w.out.String())
	}
	var status, attempts int
	var newMax int64
	var batchSize int
	if err := pool.QueryRow(ctx, `SELECT j.status, j.attempts, j.max_value, m.batch_size FROM batched_background_migration_jobs j
		JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id WHERE j.id = $1`, jobID).Scan(&status, &attempts, &newMax, &batchSize); err != nil {
		t.Fatal(err)
	}
	if status != 3 || newMax >= maxValue || batchSize != 100000 {
		t.Errorf("after TERM the batch has status %d, max_value %d (was %d), migration batch_size %d; want succeeded (3) up to where it stopped, size 100000 kept",
			status, newMax, maxValue, batchSize)
	}
	if attempts > 1 {
		t.Errorf("the yielded batch used %d attempts", attempts)
	}
	// Exactly the rows up to where it stopped are copied, each once.
	var copied, beyond, twice int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE v_big = v AND id <= $1), count(*) FILTER (WHERE v_big IS NOT NULL AND id > $1),
		count(*) FILTER (WHERE copies > 1) FROM yielded`, newMax).Scan(&copied, &beyond, &twice); err != nil {
		t.Fatal(err)
	}
	if copied != newMax || beyond != 0 || twice != 0 {
		t.Errorf("rows 1..%d: %d copied; %d copied beyond; %d copied twice", newMax, copied, beyond, twice)
	}
}

// While one `bbm finalize` runs, a second finalize of the same migration
// and a mark-finished are refused (exit 1) naming it: taken over, and then
// interrupted, the second one handed the migration back to the workers
// under the first; a mark-finished made the first one say "Done." with
// rows not migrated. The first one finishes, every row copied once.
func TestBBMFinalizeAlreadyRunning(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs ferry processes")
	}
	bin, redisURL, dbURL, ctx, pool := bbmProcessEnv(t)
	env, ferry := bbmCLI(t, bin, redisURL, dbURL)
	countingTable(ctx, t, pool, "fr", 40000)
	// At least 4 s of sleeps: the finalize still runs while the others try.
	if _, err := pool.Exec(ctx, `CREATE FUNCTION fr_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			IF NEW.id % 20 = 0 THEN PERFORM pg_sleep(0.002); END IF; RETURN NEW; END $$;
		CREATE TRIGGER fr_slow BEFORE UPDATE ON fr FOR EACH ROW EXECUTE FUNCTION fr_slow()`); err != nil {
		t.Fatal(err)
	}
	args, id := queueCountingCopy(ctx, t, ferry, pool, "fr", "--batch-size", "2000")
	first := startProc(t, "ferry bbm finalize", env, bin, append([]string{"bbm", "finalize"}, args...)...)
	testenv.Eventually(t, 30*time.Second, "finalize under way", func() bool {
		var s int
		_ = pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&s)
		return s == 5
	})
	for _, cmd := range [][]string{append([]string{"bbm", "finalize"}, args...), {"bbm", "mark-finished", fmt.Sprint(id), "--yes"}} {
		if out, code := ferry(cmd...); code != 1 || !strings.Contains(out, "is being finalized by") {
			t.Fatalf("ferry %v while a finalize runs: exit %d, want 1 naming it\n%s", cmd, code, out)
		}
	}
	if code := first.waitExit(t, 120*time.Second); code != 0 || !strings.Contains(first.out.String(), "Done.") {
		t.Fatalf("the first finalize: exit %d\n%s", code, first.out.String())
	}
	copiedOnce(ctx, t, pool, "fr")
}
