package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// Hostile input through the ferry binary (issue 11, point 4): each case
// exits 2 with its error as the first stderr line, within a bounded time,
// and touches nothing.

// hostileRun runs the ferry binary with REDIS_URL and DATABASE_URL and
// returns its exit code, stdout and stderr; it fails the test if the
// process is still running after timeout (it is killed).
func hostileRun(t *testing.T, redisURL, dbURL string, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ferryBin, args...)
	cmd.Env = childEnv("REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ferry %q did not finish within %s (killed)\nstderr: %s", args, timeout, stderr.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("ferry %q: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// wantUsage requires exit 2 and a first stderr line "ferry: ..." that
// contains every want.
func wantUsage(t *testing.T, args []string, code int, stderr string, want ...string) {
	t.Helper()
	first, _, _ := strings.Cut(stderr, "\n")
	ok := code == 2 && strings.HasPrefix(first, "ferry: ")
	for _, w := range want {
		ok = ok && strings.Contains(first, w)
	}
	if !ok {
		t.Errorf("ferry %q: exit %d, first stderr line %q; want exit 2 and a line containing %q\nstderr: %s", args, code, first, want, stderr)
	}
}

// A migrations directory holding a FIFO (or a symlink to one, or to a
// device) named *.up.sql is refused at once: reading it blocked for ever.
func TestHostileMigrationFileNotRegular(t *testing.T) {
	t.Parallel()
	e := newDBEnv(t)
	fifo := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for name, mk := range map[string]func(dir string) error{
		"fifo":              func(dir string) error { return syscall.Mkfifo(filepath.Join(dir, "2_b.up.sql"), 0o644) },
		"symlink to a fifo": func(dir string) error { return os.Symlink(fifo, filepath.Join(dir, "2_b.up.sql")) },
		"device":            func(dir string) error { return os.Symlink("/dev/zero", filepath.Join(dir, "2_b.down.sql")) },
		"symlink to a dir":  func(dir string) error { return os.Symlink(dir, filepath.Join(dir, "2_b.up.sql")) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "1_a.up.sql"), []byte("CREATE TABLE a (id int);"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := mk(dir); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"db", "migrate"}, {"db", "status"}, {"db", "migrate", "--dry-run"}} {
				args = append(args, "--dir", dir)
				start := time.Now()
				code, _, errs := hostileRun(t, "", testenv.DirectURL(t, e.url), 20*time.Second, args...)
				wantUsage(t, args, code, errs, "2_b.", "migration files must be regular files")
				if d := time.Since(start); d > 10*time.Second {
					t.Errorf("ferry %q took %s", args, d)
				}
			}
		})
	}
	if e.exists("a") || e.exists("schema_migrations") {
		t.Error("a refused migrations directory changed the database")
	}
}

// Gate directives with invalid UTF-8 are refused when the files load,
// before they reach PostgreSQL as a raw encoding error.
func TestHostileGateDirective(t *testing.T) {
	t.Parallel()
	e := newDBEnv(t)
	e.write("1_a.up.sql", "-- ferry:require-bbm CopyColumnUsingBackgroundMigrationJob ev\xffents id [[\"id\"],[\"id_big\"]]\nCREATE TABLE a (id int);\n")
	args := []string{"db", "migrate", "--dir", e.dir}
	code, _, errs := hostileRun(t, "", testenv.DirectURL(t, e.url), 30*time.Second, args...)
	wantUsage(t, args, code, errs, "1_a.up.sql", "line 1", "not valid UTF-8")
	if e.exists("a") {
		t.Error("the migration ran")
	}
}

// A migration whose SQL fails: the first stderr line is the error, not a
// log line from before it (with the default log level).
func TestHostileFailedMigrationFirstLine(t *testing.T) {
	t.Parallel()
	e := newDBEnv(t)
	e.write("1_a.up.sql", "CREATE TABLE a (id int);")
	e.write("2_b.up.sql", "SELECT no_such_column FROM a;")
	args := []string{"db", "migrate", "--dir", e.dir}
	code, out, errs := hostileRun(t, "", testenv.DirectURL(t, e.url), 30*time.Second, args...)
	first, _, _ := strings.Cut(errs, "\n")
	if code != 1 || !strings.HasPrefix(first, "ferry: migration 2_b (up) failed with: ") || !strings.Contains(first, "no_such_column") {
		t.Errorf("exit %d, first stderr line %q; want 1 and the migration's error\nstdout: %s\nstderr: %s", code, first, out, errs)
	}
	// The steps are on stdout, each once; --log-level debug logs them too.
	e.write("2_b.up.sql", "SELECT also_missing FROM a;")
	_, _, errs = hostileRun(t, "", testenv.DirectURL(t, e.url), 30*time.Second, append(args, "--log-level", "info")...)
	if strings.Contains(errs, `"msg":"running migration"`) || strings.Contains(errs, `"msg":"migration failed"`) {
		t.Errorf("--log-level info repeats the steps and the error:\n%s", errs)
	}
	_, _, errs = hostileRun(t, "", testenv.DirectURL(t, e.url), 30*time.Second, append(args, "--log-level", "debug")...)
	if !strings.Contains(errs, `"msg":"running migration"`) {
		t.Errorf("--log-level debug logged nothing:\n%s", errs)
	}
}

// enqueue refuses invalid UTF-8 in the args, class and queue, and queue
// names with white space or control characters; Redis stays empty.
func TestHostileEnqueue(t *testing.T) {
	t.Parallel()
	redisURL := testenv.RedisURL(t)
	rdb := redisFor(t, redisURL)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"enqueue", "Ferry::Noop", "[\"a\xff\"]"}, []string{"ARGS_JSON", "not valid UTF-8"}},
		{[]string{"enqueue", "Ferry::Noop", "[{\"k\xff\":1}]"}, []string{"ARGS_JSON", "not valid UTF-8"}},
		{[]string{"enqueue", "Ferry::No\xffop", "[]"}, []string{`class "Ferry::No\xffop" is not valid UTF-8`}},
		{[]string{"enqueue", "Ferry::Noop\x01", "[]"}, []string{"class", "control characters"}},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--queue", "q\xff"}, []string{`queue "q\xff" is not valid UTF-8`}},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--queue", "a b"}, []string{`queue name "a b" contains white space`}},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--queue", "a\nb"}, []string{"queue", "control characters"}},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--queue", " "}, []string{"queue is empty"}},
		{[]string{"enqueue", " ", "[]"}, []string{"CLASS must not be empty"}},
		{[]string{"enqueue", "Ferry::Noop", "[1,"}, []string{"ARGS_JSON is not valid JSON"}},
		{[]string{"enqueue", "Ferry::Noop", `{"a":1}`}, []string{"ARGS_JSON must be a JSON array"}},
		// A worker would fetch from a queue no push can fill.
		{[]string{"worker", "--queues", "ok,a b"}, []string{"worker.queues", `queue name "a b" contains white space`}},
		{[]string{"worker", "--queues", "q\xff:2"}, []string{"worker.queues", "not valid UTF-8"}},
	} {
		code, out, errs := hostileRun(t, redisURL, "", 20*time.Second, c.args...)
		wantUsage(t, c.args, code, errs, c.want...)
		if out != "" {
			t.Errorf("ferry %q printed %q", c.args, out)
		}
	}
	if n := rdb.DBSize(context.Background()).Val(); n != 0 {
		t.Errorf("refused pushes left %d keys in Redis: %v", n, rdb.Keys(context.Background(), "*").Val())
	}
	// Valid UTF-8 beyond ASCII is fine.
	if code, _, errs := hostileRun(t, redisURL, "", 20*time.Second, "enqueue", "Ferry::Noop", `["żółw"]`, "--queue", "dé"); code != 0 {
		t.Fatalf("UTF-8 push: exit %d: %s", code, errs)
	}
	if n := rdb.LLen(context.Background(), "queue:dé").Val(); n != 1 {
		t.Errorf("queue:dé holds %d jobs, want 1", n)
	}
}

// Identifiers and arguments of batched migrations are checked before any
// SQL: finalize with invalid UTF-8 answered with a raw SQLSTATE 22021.
func TestHostileBBMIdentifiers(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	const copyArgs = `[["id"],["id_big"]]`
	long := strings.Repeat("a", 64)
	run := func(args ...string) (int, string) {
		code, _, errs := hostileRun(t, b.redisURL, b.dbURL, 30*time.Second, args...)
		return code, errs
	}
	fin := func(class, table, column, args string) []string {
		return []string{"bbm", "finalize", class, table, column, args}
	}
	que := func(class, table, column, args string) []string {
		return []string{"bbm", "queue", class, table, column, args}
	}
	const cls = "CopyColumnUsingBackgroundMigrationJob"
	for _, c := range []struct {
		args []string
		want []string
	}{
		{fin(cls, "us\xffers", "id", copyArgs), []string{"invalid identifier", `table "us\xffers"`}},
		{fin(cls, "users", "i\xffd", copyArgs), []string{"invalid identifier", `column "i\xffd"`}},
		{fin(cls, "users", "id", "[[\"i\xffd\"],[\"id_big\"]]"), []string{"invalid job arguments", "UTF-8"}},
		{fin(cls, "users", "id", `[["id\u0000"],["id_big"]]`), []string{"invalid job arguments", `\u0000`}},
		{fin("Copy\xff", "users", "id", copyArgs), []string{"invalid identifier", "class"}},
		{fin("", "users", "id", copyArgs), []string{"invalid identifier", "class"}},
		{fin(cls, long, "id", copyArgs), []string{"longer than 63 bytes"}},
		{fin(cls, "a.b.c", "id", copyArgs), []string{"more than one dot"}},
		{[]string{"bbm", "finalize", "finalize[" + cls + ",us\xffers,id,'" + copyArgs + "']"}, []string{"invalid identifier", "table"}},
		{fin(cls, "users; DROP TABLE x", "id", copyArgs), []string{"Could not find batched background migration"}},
		{fin(cls, `us"ers`, "id", copyArgs), []string{"Could not find batched background migration"}},
		{fin(cls, "users", "id", `[["id"],["id_big"]`), []string{"invalid job arguments"}},
		{que(cls, "us\xffers", "id", copyArgs), []string{"invalid identifier", "table"}},
		{que(cls, "users", "id", "[[\"i\xffd\"],[\"id_big\"]]"), []string{"invalid job arguments"}},
		{que("NullifyOrphanedReferences", "users", "id", `["legacy_id","x\u0000","keep"]`), []string{"invalid job arguments"}},
		{que(cls, "users; DROP TABLE x", "id", copyArgs), []string{"table not found"}},
		{que(cls, "users", "id", `[["id"],["id_big; DROP TABLE x"]]`), []string{"column not found"}},
		{que(cls, long, "id", copyArgs), []string{"longer than 63 bytes"}},
		{que(cls, `x"; DROP TABLE x; --`, "id", copyArgs), []string{"table not found"}},
		{[]string{"bbm", "show", "users; DROP TABLE x"}, []string{"migration id must be a positive integer"}},
		{[]string{"bbm", "pause", "1 OR 1=1"}, []string{"migration id must be a positive integer"}},
		{[]string{"bbm", "show", "-1"}, []string{`migration id must be a positive integer, got "-1"`}},
		{[]string{"bbm", "mark-finished", "-1", "--yes"}, []string{`got "-1"`}},
		{[]string{"bbm", "set", "max-running", "-5"}, []string{`max-running must be an integer between 0 and 1000, got "-5"`}},
		{[]string{"bbm", "set", "max-running", "-5", "--log-level", "error"}, []string{"max-running must be", `"-5"`}},
		{[]string{"bbm", "set", "parallel", "1", "-3"}, []string{`parallel must be between 1 and 64, got "-3"`}},
		{[]string{"db", "mark-complete", "-5"}, []string{`"-5" is not a version`}},
		{[]string{"db", "downto", "-1"}, []string{`"-1" is not a version`}},
	} {
		code, errs := run(c.args...)
		wantUsage(t, c.args, code, errs, c.want...)
		if strings.Contains(errs, "SQLSTATE") {
			t.Errorf("ferry %q shows a raw SQLSTATE: %s", c.args, errs)
		}
	}
	if n := b.int(t, `SELECT count(*) FROM batched_background_migrations`); n != 0 {
		t.Errorf("%d migrations queued by refused commands", n)
	}
	if n := b.int(t, `SELECT max_running FROM ferry_bbm_settings`); n != 2 {
		t.Errorf("max_running = %d, want the default 2", n)
	}
	if n := b.int(t, `SELECT count(*) FROM x`) + b.int(t, `SELECT count(*) FROM users WHERE id_big IS NULL`); n != 201 {
		t.Errorf("tables changed (%d rows)", n)
	}
	// A negative number that is a flag's value still reaches the flag.
	code, errs := run(append(que(cls, "users", "id", copyArgs), "--pause-ms", "-1")...)
	wantUsage(t, nil, code, errs, "--pause-ms: must be at least 0, got -1")
}

// Legacy commands refuse a class that can name nothing: an empty `bm
// steal ”` exited 0. The queued job stays where it is.
func TestHostileBMClass(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if code, _, errs := hostileRun(t, b.redisURL, b.dbURL, 20*time.Second, "enqueue", "BackgroundMigrationWorker", `["CopyColumn",["users","legacy_id","id_big",1,10]]`, "--queue", "background_migration"); code != 0 {
		t.Fatal(errs)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bm", "steal", ""}, "CLASS must not be empty"},
		{[]string{"bm", "steal", "  "}, "CLASS must not be empty"},
		{[]string{"bm", "steal", "Copy\xffColumn"}, "is not a class name"},
		{[]string{"bm", "finalize", ""}, "CLASS must not be empty"},
		{[]string{"bm", "perform", "", "[]"}, "CLASS must not be empty"},
		{[]string{"bm", "perform", "CopyColumn", "[\"us\xffers\",\"legacy_id\",\"id_big\",1,10]"}, "ARGS_JSON is not valid UTF-8"},
		{[]string{"bm", "perform", "CopyColumn", `["users; DROP TABLE x","legacy_id","id_big",1,10]`}, "is not a plain identifier"},
		{[]string{"bm", "perform", "CopyColumn", `["users","legacy_id","id_big",1`}, "ARGS_JSON must be a JSON array"},
		{[]string{"bm", "pending", "--class", ""}, "--class must not be empty"},
	} {
		code, _, errs := hostileRun(t, b.redisURL, b.dbURL, 20*time.Second, c.args...)
		wantUsage(t, c.args, code, errs, c.want)
	}
	if n := b.rdb.LLen(b.ctx, "queue:background_migration").Val(); n != 1 {
		t.Errorf("queue:background_migration holds %d jobs, want the 1 queued", n)
	}
	if b.copied(t) != 0 || b.int(t, `SELECT count(*) FROM x`) != 1 {
		t.Error("a refused command changed the tables")
	}
}

// Jobs of ferry's own classes whose args do not decode go straight to the
// dead set with their ArgumentError: they went through 25 retries.
func TestHostileBadJobArgsGoToDeadSet(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	p := startProc(t, "ferry worker", childEnv("REDIS_URL="+b.redisURL, "DATABASE_URL="+b.dbURL), ferryBin, "worker", "--concurrency", "2")
	waitIdentity(b.ctx, t, b.rdb, p)
	push := func(class, args string) {
		t.Helper()
		if code, _, errs := hostileRun(t, b.redisURL, b.dbURL, 20*time.Second, "enqueue", class, args, "--queue", "background_migration"); code != 0 {
			t.Fatal(errs)
		}
	}
	push("Ferry::BatchedBackgroundMigrationExecutionWorker", `["x"]`)
	push("Ferry::BatchedBackgroundMigrationExecutionWorker", `[1,0,"t",4]`)
	// `ferry enqueue` refuses this one (exit 2); another client may not.
	b.rdb.SAdd(b.ctx, "queues", "background_migration")
	b.rdb.LPush(b.ctx, "queue:background_migration",
		`{"class":"BackgroundMigrationWorker","args":[1],"queue":"background_migration","jid":"badbmargs0000000000000001","retry":true,"created_at":1700000000.0,"enqueued_at":1700000000.0}`)
	testenv.Eventually(t, 20*time.Second, "3 jobs in the dead set", func() bool {
		return b.rdb.ZCard(b.ctx, "dead").Val() == 3
	})
	if n := b.rdb.ZCard(b.ctx, "retry").Val(); n != 0 {
		t.Errorf("%d jobs in the retry set, want 0", n)
	}
	for _, m := range b.rdb.ZRange(b.ctx, "dead", 0, -1).Val() {
		j := jobJSON(t, m)
		if j["error_class"] != "ArgumentError" || !strings.Contains(fmt.Sprint(j["error_message"]), "bad job arguments") {
			t.Errorf("dead entry %s: want ArgumentError with the decoding error", m)
		}
	}
	stopWorker(t, p, 30*time.Second)
}
