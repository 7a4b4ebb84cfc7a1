package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// GitLab's main and ci: two databases on the test PostgreSQL, the second
// given as DATABASE_URL_CI, each with its own batched migrations.
type multiDB struct {
	t        *testing.T
	bin      string
	redisURL string
	ctx      context.Context
	env      []string
	main, ci *pgxpool.Pool
	ciURL    string
}

// newMultiDB makes main and ci; ciURL, when not "", replaces ci's URL (a
// database that is down), and ci's pool is then nil.
func newMultiDB(t *testing.T, ciURL string) *multiDB {
	t.Helper()
	bin, redisURL, mainURL, ctx, mainPool := bbmProcessEnv(t)
	m := &multiDB{t: t, bin: bin, redisURL: redisURL, ctx: ctx, main: mainPool, ciURL: ciURL}
	if ciURL == "" {
		m.ciURL = testenv.DatabaseURL(t)
		pool, err := pgxpool.New(ctx, m.ciURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		m.ci = pool
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DATABASE_") || strings.HasPrefix(k, "REDIS_") || strings.HasPrefix(k, "FERRY_") {
			continue
		}
		m.env = append(m.env, kv)
	}
	m.env = append(m.env, "REDIS_URL="+redisURL, "DATABASE_URL="+mainURL, "DATABASE_URL_CI="+m.ciURL)
	return m
}

func (m *multiDB) run(args ...string) (code int, stdout, stderr string) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(m.ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bin, args...)
	cmd.Env = m.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		m.t.Fatalf("ferry %q: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// want runs ferry and fails the test unless it exits code and stdout (or
// stderr, for a failure) contains every string of has.
func (m *multiDB) want(code int, has []string, args ...string) (stdout, stderr string) {
	m.t.Helper()
	got, out, errs := m.run(args...)
	text := out + errs
	for _, h := range has {
		if !strings.Contains(text, h) {
			m.t.Fatalf("ferry %q: exit %d, missing %q\nstdout:\n%s\nstderr:\n%s", args, got, h, out, errs)
		}
	}
	if got != code {
		m.t.Fatalf("ferry %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, got, code, out, errs)
	}
	return out, errs
}

// worker starts one `ferry worker` over both databases; its output is
// shown if the test fails.
func (m *multiDB) worker() *lockedBuffer {
	m.t.Helper()
	cmd := exec.Command(m.bin, "worker", "--concurrency", "4", "--timeout", "5s", "--log-level", "warn")
	out := &lockedBuffer{}
	cmd.Env, cmd.Stdout, cmd.Stderr = m.env, out, out
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if m.t.Failed() {
			m.t.Logf("worker output:\n%s", out.String())
		}
	})
	return out
}

// lockedBuffer is a process's output, read while it writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

const multiArgs = `[["v"],["v_big"]]`

// One worker runs the migrations queued in main and in ci; wait, status,
// list and check name both databases, and ids read as GitLab prints them.
func TestBBMMultiDatabaseOneWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a worker process")
	}
	m := newMultiDB(t, "")
	countingTable(m.ctx, t, m.main, "builds", 20000)
	countingTable(m.ctx, t, m.ci, "ci_builds", 20000)
	m.want(0, []string{"main: ferry schema is at version", "ci: ferry schema is at version"}, "setup")

	// A queue that names no database is refused: GitLab's words, the names.
	m.want(2, []string{"Please specify the database", "main, ci"},
		"bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "builds", "id", multiArgs)
	m.want(0, []string{"Queued batched background migration main_1"},
		"bbm", "queue", "--db", "main", "CopyColumnUsingBackgroundMigrationJob", "builds", "id", multiArgs)
	m.want(0, []string{"Queued batched background migration ci_1"},
		"bbm", "queue", "--database", "ci", "CopyColumnUsingBackgroundMigrationJob", "ci_builds", "id", multiArgs)
	// Each database has its own migration 1; it is not in the other.
	m.want(2, []string{"not found"}, "bbm", "--db", "ci", "queue", "CopyColumnUsingBackgroundMigrationJob", "builds", "id", multiArgs)

	// wait names both before the worker starts; then the worker finishes
	// both and wait exits 0.
	wctx, cancel := context.WithTimeout(m.ctx, 3*time.Minute)
	defer cancel()
	wait := exec.CommandContext(wctx, m.bin, "bbm", "wait", "--interval", "1s")
	wait.Env = m.env
	pr, pw := io.Pipe()
	wait.Stdout = pw
	var waitErr bytes.Buffer
	wait.Stderr = &waitErr
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var waited []string
	for len(waited) < 3 {
		l, ok := <-lines
		if !ok {
			t.Fatalf("wait ended early: %q %s", waited, waitErr.String())
		}
		waited = append(waited, l)
	}
	first := strings.Join(waited, "\n")
	if !strings.HasPrefix(first, "Still waiting on 2 batched background migration(s):") ||
		!strings.Contains(first, "\tmain: active | CopyColumnUsingBackgroundMigrationJob,builds,id,") ||
		!strings.Contains(first, "\tci: active | CopyColumnUsingBackgroundMigrationJob,ci_builds,id,") {
		t.Fatalf("wait:\n%s", first)
	}
	m.worker()
	go func() {
		for range lines { // drain until wait exits
		}
	}()
	err := wait.Wait()
	_ = pw.Close()
	if err != nil {
		t.Fatalf("wait: %v\n%s", err, waitErr.String())
	}
	copiedOnce(m.ctx, t, m.main, "builds")
	copiedOnce(m.ctx, t, m.ci, "ci_builds")

	out, _ := m.want(0, nil, "bbm", "status")
	wantStatus := "Database: main\nfinished | CopyColumnUsingBackgroundMigrationJob,builds,id,[[\"v\"],[\"v_big\"]] | id main_1, 100.00%"
	if !strings.HasPrefix(out, wantStatus) || !strings.Contains(out, "\nDatabase: ci\nfinished | CopyColumnUsingBackgroundMigrationJob,ci_builds,id,") ||
		!strings.Contains(out, "| id ci_1, 100.00%") {
		t.Fatalf("status:\n%s", out)
	}
	// GitLab's status:ci and Sourcegraph's -db=ci read one database.
	for _, args := range [][]string{{"bbm", "status:ci"}, {"bbm", "gitlab:background_migrations:status:ci"}, {"bbm", "list", "-db=ci"}} {
		out, _ := m.want(0, []string{"Database: ci", "ci_builds"}, args...)
		if strings.Contains(out, "main") {
			t.Fatalf("%q shows main:\n%s", args, out)
		}
	}
	out, _ = m.want(0, nil, "bbm", "list", "--json")
	var rows []struct {
		Database string `json:"database"`
		ID       int64  `json:"id"`
		Table    string `json:"table_name"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 2 ||
		rows[0].Database != "main" || rows[0].Table != "builds" || rows[1].Database != "ci" || rows[1].Table != "ci_builds" {
		t.Fatalf("list --json: %v %+v\n%s", err, rows, out)
	}
	m.want(0, []string{"All batched background migrations are finished."}, "bbm", "check")
}

// The runbook forms on two databases: GitLab's ids and rake tasks, the
// refusal of a change that names no database, finalize:ci, per-database
// settings.
func TestBBMMultiDatabaseForms(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	m := newMultiDB(t, "")
	for _, p := range []*pgxpool.Pool{m.main, m.ci} {
		countingTable(m.ctx, t, p, "events", 5000)
	}
	// A database with no migrations says so under its header.
	if out, _ := m.want(0, nil, "bbm", "status", "--db", "ci"); out != "Database: ci\n\tno batched background migrations\n" {
		t.Fatalf("status of a database with none:\n%q", out)
	}
	for _, db := range []string{"main", "ci"} {
		m.want(0, []string{"Queued batched background migration " + db + "_1"},
			"bbm", "queue", "--db", db, "CopyColumnUsingBackgroundMigrationJob", "events", "id", multiArgs)
	}
	pasted := `CopyColumnUsingBackgroundMigrationJob,events,id,[["v"]\, ["v_big"]]`

	// Ambiguous changes: a bare id, a bare finalize, the cluster switches.
	// Each refusal says the ways that work for that command.
	for _, tc := range []struct {
		args []string
		ways string
	}{
		{[]string{"bbm", "pause", "1"}, "add --db NAME, or write the id as main_1 or ci_1"},
		{[]string{"bbm", "pause[1]"}, "write the id as main_1 or ci_1"},
		{[]string{"bbm", "finalize[" + pasted + "]"}, ": finalize[" + pasted + "] would act on one of several databases (main, ci); add --db NAME, or write the task as finalize:main[...]"},
		{[]string{"bbm", "gitlab:background_migrations:finalize[" + pasted + "]"}, "write the task as finalize:main[...]"},
		{[]string{"bbm", "finalize", "CopyColumnUsingBackgroundMigrationJob", "events", "id", multiArgs}, "write the task as finalize:main[...]"},
		{[]string{"bbm", "set", "max-running", "3"}, "add --db NAME, or --db all for every one"},
		{[]string{"bbm", "pause-all"}, "add --db NAME, or --db all for every one"},
		{[]string{"bbm", "mark-finished", "1", "--yes"}, "write the id as main_1 or ci_1"},
		{[]string{"bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", multiArgs}, "main, ci); add --db NAME\n"},
	} {
		_, errs := m.want(2, []string{"Please specify the database", "main, ci"}, tc.args...)
		if !strings.Contains(errs+"\n", tc.ways) {
			t.Errorf("ferry %q: want %q in\n%s", tc.args, tc.ways, errs)
		}
	}
	// check reads the database suffix like its rake siblings.
	if code, _, errs := m.run("bbm", "check:ci"); code == 2 || strings.Contains(errs, "unknown command") {
		t.Fatalf("check:ci: exit %d\n%s", code, errs)
	}
	// A bare id in show is in both databases: ambiguous too, naming both.
	m.want(2, []string{"Please specify the database", "main_1 or ci_1"}, "bbm", "show", "1")
	// Unknown databases are named with the configured ones.
	m.want(2, []string{`"xy"`, "main, ci"}, "bbm", "finalize:xy["+pasted+"]")
	m.want(2, []string{`"xy"`, "main, ci"}, "bbm", "pause", "xy_1")
	m.want(2, []string{`"xy"`, "main, ci"}, "bbm", "status", "--db", "xy")
	m.want(2, []string{"names database main, but --db says ci"}, "bbm", "--db", "ci", "pause", "main_1")
	// An id not in the named database is named the way it was typed.
	m.want(2, []string{"not found: id ci_9"}, "bbm", "show", "ci_9")
	m.want(2, []string{"not found: id ci_9"}, "bbm", "pause", "ci_9")

	// pause[main_85] and resume[main_85], as GitLab 18.5 prints ids.
	m.want(0, []string{"paused | CopyColumnUsingBackgroundMigrationJob,events,id", "(main_1)"}, "bbm", "pause[main_1]")
	out, _ := m.want(0, nil, "bbm", "status")
	if !strings.Contains(out, "Database: main\npaused |") || !strings.Contains(out, "Database: ci\nactive |") {
		t.Fatalf("status after pause[main_1]:\n%s", out)
	}
	m.want(0, []string{"active |", "(main_1)"}, "bbm", "gitlab:background_migrations:resume[main_1]")
	m.want(0, []string{"paused |", "(ci_1)"}, "bbm", "pause", "--db", "ci", "1")
	// The commands the reasons print name the database, so they work as printed.
	m.want(0, []string{"paused; `ferry bbm resume ci_1` resumes"}, "bbm", "status", "--db", "ci")
	m.want(2, []string{"empty database name"}, "bbm", "status", "--db", "")
	m.want(0, []string{"active |", "(ci_1)"}, "bbm", "resume", "ci_1")

	// show[ci_1] names its database and a finalize that names it too.
	out, _ = m.want(0, []string{"ferry bbm finalize --db ci CopyColumnUsingBackgroundMigrationJob events id"}, "bbm", "show[ci_1]")
	if !regexp.MustCompile(`(?m)^Database +ci\nId +ci_1\n`).MatchString(out) {
		t.Fatalf("show[ci_1]:\n%s", out)
	}
	out, _ = m.want(0, nil, "bbm", "show", "--json", "ci_1")
	var shown struct {
		Database  string `json:"database"`
		Migration struct {
			Table string `json:"table_name"`
		} `json:"migration"`
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.Database != "ci" || shown.Migration.Table != "events" {
		t.Fatalf("show --json: %v %+v", err, shown)
	}

	// check names both, with commands that work as printed.
	m.want(1, []string{"Database: main\nExpected batched background migration", "Database: ci\nExpected batched background migration",
		"ferry bbm finalize --db main CopyColumnUsingBackgroundMigrationJob events id", "ferry bbm finalize --db ci CopyColumnUsingBackgroundMigrationJob events id"},
		"bbm", "check")

	// Per-database cluster switches.
	m.want(0, []string{"ci: All batched background migrations paused"}, "bbm", "pause-all", "--db", "ci")
	out, _ = m.want(0, nil, "bbm", "status")
	if !strings.Contains(out, "all migrations paused (ferry bbm resume-all --db ci)") || strings.Count(out, "all migrations paused") != 1 ||
		!strings.Contains(out, "paused by `ferry bbm pause-all --db ci`; `ferry bbm resume-all --db ci` resumes") {
		t.Fatalf("status after pause-all --db ci:\n%s", out)
	}
	m.want(0, []string{"main: max-running is now 3", "ci: max-running is now 3"}, "bbm", "--db", "all", "set", "max-running", "3")
	var maxMain, maxCI int
	if err := m.main.QueryRow(m.ctx, `SELECT max_running FROM ferry_bbm_settings`).Scan(&maxMain); err != nil {
		t.Fatal(err)
	}
	if err := m.ci.QueryRow(m.ctx, `SELECT max_running FROM ferry_bbm_settings`).Scan(&maxCI); err != nil {
		t.Fatal(err)
	}
	if maxMain != 3 || maxCI != 3 {
		t.Fatalf("max-running main %d ci %d", maxMain, maxCI)
	}
	m.want(0, []string{"ci: Batched background migrations resumed."}, "bbm", "resume-all", "-db=ci")

	// A configuration only ci has: still refused without a database, but
	// the ways name ci.
	if _, err := m.ci.Exec(m.ctx, `ALTER TABLE events ADD COLUMN v_only_ci bigint`); err != nil {
		t.Fatal(err)
	}
	m.want(0, nil, "bbm", "queue", "--db", "ci", "--paused", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["v"],["v_only_ci"]]`)
	onlyCI := `CopyColumnUsingBackgroundMigrationJob,events,id,[["v"]\, ["v_only_ci"]]`
	m.want(2, []string{"finalize[" + onlyCI + "] would act on one of several databases (main, ci); only ci has this migration: add --db ci, or write the task as finalize:ci[...]"},
		"bbm", "finalize["+onlyCI+"]")
	m.want(0, nil, "bbm", "mark-finished", "ci_2", "--yes")

	// A finalize that cannot complete names the migration as commands take it.
	if _, err := m.ci.Exec(m.ctx, `ALTER TABLE events ADD CONSTRAINT small CHECK (v_big <= 2500)`); err != nil {
		t.Fatal(err)
	}
	m.want(1, []string{"could not be completed", "see `ferry bbm show ci_1`"}, "bbm", "finalize:ci["+pasted+"]", "--no-progress")
	if _, err := m.ci.Exec(m.ctx, `ALTER TABLE events DROP CONSTRAINT small`); err != nil {
		t.Fatal(err)
	}
	m.want(0, nil, "bbm", "retry", "ci_1")

	// finalize:ci[...] finishes ci's migration and leaves main's alone.
	m.want(0, []string{"Done."}, "bbm", "finalize:ci["+pasted+"]", "--no-progress")
	copiedOnce(m.ctx, t, m.ci, "events")
	var mainCopied int
	if err := m.main.QueryRow(m.ctx, `SELECT count(*) FROM events WHERE v_big IS NOT NULL`).Scan(&mainCopied); err != nil || mainCopied != 0 {
		t.Fatalf("main's events touched by finalize:ci: %d %v", mainCopied, err)
	}
	out, _ = m.want(1, []string{"Database: main\nExpected batched background migration", "ferry bbm finalize --db main"}, "bbm", "check")
	if strings.Contains(out, "Database: ci") {
		t.Fatalf("check after finalize:ci names ci:\n%s", out)
	}
	m.want(0, []string{"Done."}, "bbm", "gitlab:background_migrations:finalize:main["+pasted+"]", "--no-progress")
	copiedOnce(m.ctx, t, m.main, "events")
	m.want(0, []string{"All batched background migrations are finished."}, "bbm", "check")
	m.want(0, []string{"All batched background migrations have finished."}, "bbm", "wait", "--interval", "1s")
}

// A database that is down: the other's migrations run in the same worker
// and read commands show it, and the error names the one that is down.
func TestBBMMultiDatabaseOneDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a worker process")
	}
	down := fmt.Sprintf("postgres://ferry@127.0.0.1:%d/ferry?sslmode=disable&connect_timeout=2", freePort(t))
	m := newMultiDB(t, down)
	countingTable(m.ctx, t, m.main, "builds", 5000)
	m.want(0, []string{"Queued batched background migration main_1"},
		"bbm", "queue", "--db", "main", "CopyColumnUsingBackgroundMigrationJob", "builds", "id", multiArgs)
	w := m.worker()
	m.want(0, []string{"All batched background migrations have finished."}, "bbm", "wait", "--db", "main", "--interval", "1s")
	copiedOnce(m.ctx, t, m.main, "builds")
	testenv.Eventually(t, 30*time.Second, "the worker's warning naming ci", func() bool {
		return strings.Contains(w.String(), `"database":"ci"`)
	})

	out, errs := m.want(1, []string{"Database: main\nfinished | CopyColumnUsingBackgroundMigrationJob,builds,id", "database ci: cannot reach PostgreSQL"},
		"bbm", "status")
	if strings.Contains(out, "Database: ci\nfinished") || !strings.HasPrefix(errs, "ferry: database ci: ") {
		t.Fatalf("status:\n%s\n%s", out, errs)
	}
	m.want(1, []string{"database ci: cannot reach PostgreSQL", "All batched background migrations of main are finished."}, "bbm", "check")
	m.want(0, []string{"All batched background migrations are finished."}, "bbm", "check", "--db", "main")
	// In JSON too, the database that could not be checked is in the answer.
	out, _ = m.want(1, nil, "bbm", "check", "--json")
	var checked []map[string]any
	if err := json.Unmarshal([]byte(out), &checked); err != nil || len(checked) != 1 || checked[0]["database"] != "ci" ||
		!strings.Contains(fmt.Sprint(checked[0]["error"]), "cannot reach PostgreSQL") {
		t.Fatalf("check --json with ci down: %v\n%s", err, out)
	}
	m.want(1, []string{"database ci: cannot reach PostgreSQL"}, "bbm", "pause", "ci_1")
}

// With several databases, the way out `db migrate --db ci` prints for a
// class this binary lacks names ci's migration (ci_1): a bare 1 would be
// refused, or taken for main's.
func TestDBMigrateWayOutNamesTheDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	m := newMultiDB(t, "")
	// ferry db needs a real session; the tests may run through PgBouncer.
	m.env = append(m.env, "DATABASE_DIRECT_URL_CI="+testenv.DirectURL(t, m.ciURL))
	m.want(0, nil, "setup")
	if _, err := m.ci.Exec(m.ctx, `INSERT INTO batched_background_migrations
		(job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size)
		VALUES ('Gone::Backfill', 'events', 'id', '[]', 1, 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/1_swap.up.sql", []byte("-- ferry:require-bbm Gone::Backfill events id []\nCREATE TABLE b (id int);\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs := m.want(1, []string{"\tferry bbm mark-finished ci_1 --yes"}, "db", "migrate", "--db", "ci", "--dir", dir)
	if strings.Contains(errs, "mark-finished 1 ") {
		t.Fatalf("a bare id:\n%s", errs)
	}
}

// A worker started while its main database is down (they start together
// after a reboot) waits for it instead of exiting, and runs main's
// migrations once it answers.
func TestWorkerStartsBeforeItsDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a worker process")
	}
	m := newMultiDB(t, "")
	countingTable(m.ctx, t, m.main, "events", 3000)
	var px *tcpProxy
	for i, kv := range m.env {
		if v, ok := strings.CutPrefix(kv, "DATABASE_URL="); ok {
			u, err := url.Parse(v)
			if err != nil {
				t.Fatal(err)
			}
			px = startProxy(t, u.Host)
			u.Host = px.addr()
			m.env[i] = "DATABASE_URL=" + u.String()
		}
	}
	px.down()
	w := m.worker()
	testenv.Eventually(t, 30*time.Second, "the worker waiting for main", func() bool {
		return strings.Contains(w.String(), "cannot reach PostgreSQL") && strings.Contains(w.String(), `"database":"main"`)
	})
	px.up()
	m.want(0, []string{"Queued batched background migration main_1"},
		"bbm", "queue", "--db", "main", "CopyColumnUsingBackgroundMigrationJob", "events", "id", multiArgs)
	m.want(0, []string{"All batched background migrations have finished."}, "bbm", "wait", "--db", "main", "--interval", "1s")
	copiedOnce(m.ctx, t, m.main, "events")
}
