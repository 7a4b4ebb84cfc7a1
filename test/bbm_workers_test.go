package test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

type bbmProc struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func bbmStartWorker(t *testing.T, bin, redisURL, dbURL string) *bbmProc {
	t.Helper()
	p := &bbmProc{cmd: exec.Command(bin, "worker", "--concurrency", "4", "--timeout", "5s", "--log-level", "warn")}
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
	bin := bbmFerryBinary(t)
	redisURL := testenv.RedisURL(t)
	dbURL := testenv.DatabaseURL(t)
	ctx := testenv.Context(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
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
