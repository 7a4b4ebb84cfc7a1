package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// privateServices are a Redis and a PostgreSQL of one test's own, run by
// scripts/services in a state dir under .state/, so the test can stop and
// start PostgreSQL without disturbing the tests running beside it.
type privateServices struct {
	t        *testing.T
	root     string
	state    string
	redisURL string
	dbURL    string
}

func startPrivateServices(t *testing.T) *privateServices {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Under the checkout's .state (git-ignored, and reachable by the
	// PostgreSQL run user, unlike a 0700 temp dir).
	if err := os.MkdirAll(filepath.Join(root, ".state"), 0o755); err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp(filepath.Join(root, ".state"), "fault-")
	if err != nil {
		t.Fatal(err)
	}
	s := &privateServices{t: t, root: root, state: state}
	t.Cleanup(func() {
		_, _ = s.services("stop")
		_ = os.RemoveAll(state)
	})
	out, err := s.services("start")
	if err != nil {
		t.Fatalf("scripts/services start: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "export REDIS_URL="); ok {
			s.redisURL = v
		}
		if v, ok := strings.CutPrefix(line, "export DATABASE_URL="); ok {
			s.dbURL = v
		}
	}
	if s.redisURL == "" || s.dbURL == "" {
		t.Fatalf("scripts/services start printed no URLs:\n%s", out)
	}
	return s
}

// services runs scripts/services with this test's state dir; stdout only
// (stderr is progress), unless it fails.
func (s *privateServices) services(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.root, "scripts", "services"), args...)
	cmd.Env = append(os.Environ(), "FERRY_STATE_DIR="+s.state, "FERRY_NO_CHROMIUM=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

func (s *privateServices) mustServices(args ...string) {
	s.t.Helper()
	if out, err := s.services(args...); err != nil {
		s.t.Fatalf("scripts/services %v: %v\n%s", args, err, out)
	}
}

// PostgreSQL stopped (fast: a clean shutdown; immediate: a crash, as on a
// failover) for a few seconds in the middle of a migration run by two
// `ferry worker` processes, and once during a `ferry bbm finalize`: each
// migration finishes without an operator, no live worker is taken for
// dead, and every row is copied exactly once.
func TestFaultPostgresRestartMidMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("runs its own PostgreSQL and worker processes")
	}
	bin := bbmFerryBinary(t)
	srv := startPrivateServices(t)
	ctx := testenv.Context(t)
	ctx, cancel := context.WithTimeout(ctx, 115*time.Second) // testenv.Context allows 2 minutes
	defer cancel()
	// Named ferry*, so migrations do not pace for the test's polling.
	pool, err := pgxpool.New(ctx, srv.dbURL+"&application_name=ferry-test")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ferry := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "REDIS_URL="+srv.redisURL, "DATABASE_URL="+srv.dbURL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ferry %v: %v\n%s", args, err, out)
		}
	}
	ferry("setup")
	for range 2 {
		bbmStartWorker(t, bin, srv.redisURL, srv.dbURL)
	}
	const rows = 60000
	for _, mode := range []string{"fast", "immediate"} {
		table := "restart_" + mode
		countingTable(ctx, t, pool, table, rows)
		ferry("bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", table, "id", `[["v"],["v_big"]]`,
			"--parallel", "2", "--batch-size", "2000", "--target-batch-duration", "300ms")
		copied := func() int64 {
			var n int64
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE v_big IS NOT NULL`).Scan(&n)
			return n
		}
		testenv.Eventually(t, 60*time.Second, table+": a fifth copied", func() bool { return copied() > rows/5 })
		srv.mustServices("pg-stop", mode)
		// Down for a while (the fault itself, not a wait for something):
		// longer than the liveness grace, so every heartbeat is stale when
		// PostgreSQL is back.
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(5 * time.Second):
		}
		srv.mustServices("pg-start")
		var status int
		testenv.Eventually(t, 60*time.Second, table+": migration done", func() bool {
			err := pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE table_name = $1`, table).Scan(&status)
			if err == nil && status == 4 {
				t.Fatalf("%s: the migration failed after the restart", table)
			}
			return err == nil && status == 3
		})
		copiedOnce(ctx, t, pool, table)
	}
	// `ferry bbm finalize` rides out a crash of PostgreSQL too (the workers
	// leave a finalizing migration alone; pause-all keeps them off it
	// before that).
	ferry("bbm", "pause-all")
	table := "restart_finalize"
	countingTable(ctx, t, pool, table, rows)
	cfg := []string{"CopyColumnUsingBackgroundMigrationJob", table, "id", `[["v"],["v_big"]]`}
	ferry(append([]string{"bbm", "queue"}, append(cfg, "--batch-size", "2000", "--target-batch-duration", "300ms")...)...)
	fin := exec.CommandContext(ctx, bin, append([]string{"bbm", "finalize", "--log-level", "warn"}, cfg...)...)
	fin.Env = append(os.Environ(), "REDIS_URL="+srv.redisURL, "DATABASE_URL="+srv.dbURL)
	var finOut strings.Builder
	fin.Stdout, fin.Stderr = &finOut, &finOut
	if err := fin.Start(); err != nil {
		t.Fatal(err)
	}
	finDone := make(chan error, 1)
	go func() { finDone <- fin.Wait() }()
	testenv.Eventually(t, 60*time.Second, table+": a fifth copied", func() bool {
		var n int64
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE v_big IS NOT NULL`).Scan(&n)
		return n > rows/5
	})
	srv.mustServices("pg-stop", "immediate")
	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(5 * time.Second):
	}
	srv.mustServices("pg-start")
	select {
	case err := <-finDone:
		if err != nil {
			t.Fatalf("ferry bbm finalize across a PostgreSQL crash: %v\n%s", err, finOut.String())
		}
	case <-ctx.Done():
		t.Fatalf("ferry bbm finalize did not end after PostgreSQL came back\n%s", finOut.String())
	}
	copiedOnce(ctx, t, pool, table)
	ferry("bbm", "resume-all")

	var died int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs
		WHERE exception_class = 'Ferry::WorkerDied'`).Scan(&died); err != nil {
		t.Fatal(err)
	}
	if died != 0 {
		t.Fatalf("%d batches of live workers were taken for a dead worker's", died)
	}
	var notes []string
	rowsOut, err := pool.Query(ctx, `SELECT coalesce(exception_class, ''), count(*) FROM batched_background_migration_job_transition_logs
		WHERE exception_class IS NOT NULL GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rowsOut.Next() {
		var c string
		var n int
		if err := rowsOut.Scan(&c, &n); err != nil {
			t.Fatal(err)
		}
		notes = append(notes, fmt.Sprintf("%s: %d", c, n))
	}
	rowsOut.Close()
	t.Logf("transitions with an exception: %v", notes)
}
