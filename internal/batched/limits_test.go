package batched_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// Three engines (separate pools and sessions, as three processes) on five
// migrations: max-running (2) is never exceeded, sampled continuously, and
// every table is migrated exactly once.
func TestMaxRunningHoldsAcrossEngines(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	e := b.engine(t, batched.Config{})
	var ids []int64
	for i := range 5 {
		name := fmt.Sprintf("lim%d", i)
		b.table(t, name, 8000)
		res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: name, Column: "id", BatchSize: 300, SubBatchSize: 100, MaxParallel: 2})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.Migration.ID)
	}
	var maxSeen, samples atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int64
			if err := b.pool.QueryRow(ctx, `SELECT count(DISTINCT batched_background_migration_id) FROM batched_background_migration_jobs WHERE status = 1`).Scan(&n); err == nil {
				samples.Add(1)
				if n > maxSeen.Load() {
					maxSeen.Store(n)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for range 3 {
		en := b.engine(t, batched.Config{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := en.RunLocal(ctx, 3, true); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	if maxSeen.Load() > 2 {
		t.Fatalf("max-running exceeded: saw %d migrations running at once", maxSeen.Load())
	}
	if maxSeen.Load() < 2 {
		t.Logf("only saw %d running at once (%d samples)", maxSeen.Load(), samples.Load())
	}
	for i, id := range ids {
		if s := b.status(t, id); s != batched.Finished {
			t.Fatalf("migration %d: %s", id, s)
		}
		b.checkExactlyOnce(t, fmt.Sprintf("lim%d", i))
	}
}

// A killed worker: its backends are terminated mid-batch (as on SIGKILL,
// the session lock goes with them). Another engine re-runs the batch at
// once, from its cursor: every row still exactly once.
func TestKilledWorkerBatchResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "killed", 20000)
	// Slow rows so the victim is mid-batch when killed.
	if _, err := b.pool.Exec(ctx, `CREATE FUNCTION slowish() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id % 500 = 0 THEN PERFORM pg_sleep(0.01); END IF; RETURN NEW; END $$;
		CREATE TRIGGER slowish BEFORE UPDATE ON killed FOR EACH ROW EXECUTE FUNCTION slowish()`); err != nil {
		t.Fatal(err)
	}
	victimURL := b.url + sepFor(b.url) + "application_name=ferry-victim"
	vb := &bundle{url: victimURL, pool: b.pool, reg: b.reg}
	victim := vb.engine(t, batched.Config{})
	res, err := victim.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "killed", Column: "id", BatchSize: 20000, SubBatchSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	vctx, vcancel := context.WithCancel(ctx)
	defer vcancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = victim.RunBatch(vctx, res.Migration.ID)
	}()
	testenv.Eventually(t, 30*time.Second, "victim mid-batch", func() bool {
		var c *int64
		_ = b.pool.QueryRow(ctx, `SELECT cursor_value FROM batched_background_migration_jobs WHERE status = 1`).Scan(&c)
		return c != nil && *c > 3000
	})
	batched.SimulateCrash(victim)
	if _, err := b.direct(t).Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'ferry-victim%' OR (application_name LIKE 'ferry-bbm:%' AND pid <> pg_backend_pid())`); err != nil {
		t.Fatal(err)
	}
	vcancel()
	<-done
	rescuer := b.engine(t, batched.Config{})
	start := time.Now()
	if err := rescuer.RunLocal(ctx, 2, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, res.Migration.ID); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	b.checkExactlyOnce(t, "killed")
	var died int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'Ferry::WorkerDied'
		AND exception_message LIKE '%stopped while running this batch; it resumes after the last committed sub-batch (this try moved it forward, so it used no attempt)'`).Scan(&died); err != nil || died != 1 {
		t.Fatalf("want the batch rescued from a dead worker once, saying it resumes, got %d (%v)", died, err)
	}
	t.Logf("rescued and finished in %s", time.Since(start))
}

func TestQueueRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "users", 10)
	if _, err := b.pool.Exec(ctx, `CREATE TABLE x (id int); CREATE TABLE "we""ird" (id int primary key, a int, b bigint);
		CREATE TABLE typed (id int primary key, s text, n bigint)`); err != nil {
		t.Fatal(err)
	}
	e := b.engine(t, batched.Config{})
	long := strings.Repeat("a", 64)
	cases := []struct {
		name string
		o    batched.QueueOptions
		want error
	}{
		{"injection table", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users; DROP TABLE x", Column: "id", Args: []byte(`[["v"],["v_big"]]`)}, batched.ErrTableNotFound},
		{"injection column", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id; DROP TABLE x", Args: []byte(`[["v"],["v_big"]]`)}, batched.ErrColumnNotFound},
		{"injection arg", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v\" = 1; DROP TABLE x; --"],["v_big"]]`)}, batched.ErrColumnNotFound},
		{"quote", batched.QueueOptions{Class: batched.CopyColumnClass, Table: `users"`, Column: "id", Args: []byte(`[["v"],["v_big"]]`)}, batched.ErrTableNotFound},
		{"64 chars", batched.QueueOptions{Class: batched.CopyColumnClass, Table: long, Column: "id", Args: []byte(`[["v"],["v_big"]]`)}, batched.ErrInvalidIdent},
		{"64 chars column", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["` + long + `"],["v_big"]]`)}, batched.ErrInvalidIdent},
		{"arity", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"]]`)}, batched.ErrInvalidArgs},
		{"malformed json", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],`)}, batched.ErrInvalidArgs},
		{"unknown class", batched.QueueOptions{Class: "Nope", Table: "users", Column: "id"}, batched.ErrUnknownClass},
		{"non-integer column", batched.QueueOptions{Class: batched.NullifyOrphansClass, Table: "users", Column: "v_big", Args: []byte(`["v","x","id"]`)}, nil},
		{"missing parent", batched.QueueOptions{Class: batched.NullifyOrphansClass, Table: "users", Column: "id", Args: []byte(`["v","nope","id"]`)}, batched.ErrTableNotFound},
		// One bound beyond the other end of the ids (3..30): an empty
		// range, not a finished migration that copied nothing.
		{"max below ids", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],["v_big"]]`), MaxValue: new(int64(2))}, batched.ErrInvalidOption},
		{"min above ids", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],["v_big"]]`), MinValue: new(int64(31))}, batched.ErrInvalidOption},
		{"max below min", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],["v_big"]]`), MinValue: new(int64(5)), MaxValue: new(int64(4))}, batched.ErrInvalidOption},
		// Statements every batch would fail on: PostgreSQL parses them at
		// queue time.
		{"text into bigint", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "typed", Column: "id", Args: []byte(`[["s"],["n"]]`)}, batched.ErrInvalidArgs},
		{"bigint into text", batched.QueueOptions{Class: batched.CopyColumnClass, Table: "typed", Column: "id", Args: []byte(`[["n"],["s"]]`)}, nil},
		{"parent of another type", batched.QueueOptions{Class: batched.NullifyOrphansClass, Table: "typed", Column: "id", Args: []byte(`["n","typed","s"]`)}, batched.ErrInvalidArgs},
	}
	for _, c := range cases {
		_, err := e.Queue(ctx, c.o)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) || !batched.IsBadInput(err) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM x`).Scan(&n); err != nil {
		t.Fatalf("table x is gone: %v", err)
	}
	// A table spelled with and without its schema is one configuration.
	first, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "public.users", Column: "id", Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil || first.Existing || first.Migration.Table != "public.users" {
		t.Fatalf("public.users: %+v, %v", first, err)
	}
	again, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil || !again.Existing || again.Migration.ID != first.Migration.ID {
		t.Fatalf("users after public.users: %+v, %v", again, err)
	}
	if m, err := e.FindByConfig(ctx, batched.CopyColumnClass, "public.users", "id", []byte(`[["v"], ["v_big"]]`)); err != nil || m.ID != first.Migration.ID {
		t.Fatalf("find public.users: %+v, %v", m, err)
	}
	// A quoted, odd but real name works.
	if _, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: `we"ird`, Column: "id", Args: []byte(`[["a"],["b"]]`)}); err != nil {
		t.Fatalf(`we"ird: %v`, err)
	}
}

// GitLab's documented SQL (CONTRACT.md) answers as documented.
func TestDocumentedStatusQueries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "events", 3000)
	e := b.engine(t, batched.Config{})
	done, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "events", Column: "id", BatchSize: 1000, SubBatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	pending, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "events", Column: "id", Args: []byte(`[["v"], ["v_big"]]`)})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := b.pool.Query(ctx, `SELECT job_class_name, table_name, column_name, job_arguments FROM batched_background_migrations WHERE status NOT IN (3, 6);`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var c, tb, col, args string
		if err := rows.Scan(&c, &tb, &col, &args); err != nil {
			t.Fatal(err)
		}
		got = append(got, c+","+tb+","+col+","+args)
	}
	if len(got) != 1 || got[0] != `CopyColumnUsingBackgroundMigrationJob,events,id,[["v"], ["v_big"]]` {
		t.Fatalf("unfinished: %q (pending id %d)", got, pending.Migration.ID)
	}
	rows, err = b.pool.Query(ctx, fmt.Sprintf(`SELECT started_at, finished_at, finished_at - started_at AS duration, min_value, max_value, batch_size, sub_batch_size FROM batched_background_migration_jobs WHERE batched_background_migration_id = %d ORDER BY id DESC LIMIT 10;`, done.Migration.ID))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var prevMin int64 = 1 << 62
	for rows.Next() {
		var st, fin *time.Time
		var dur *time.Duration
		var lo, hi int64
		var bs, sbs int
		if err := rows.Scan(&st, &fin, &dur, &lo, &hi, &bs, &sbs); err != nil {
			t.Fatal(err)
		}
		if st == nil || fin == nil || dur == nil || hi < lo || hi >= prevMin || bs < sbs {
			t.Fatalf("bad job row: %v %v %v %d %d %d %d", st, fin, dur, lo, hi, bs, sbs)
		}
		prevMin = lo
		n++
	}
	if n == 0 {
		t.Fatal("no jobs")
	}
}

// A migration whose finalizer's process is gone (its session lock is not
// held) is shown with the reason and what to do, and `resume` makes it
// active again; one whose finalizer is alive is left alone.
func TestResumeAfterFinalizerDied(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "fin", 100)
	e := b.engine(t, batched.Config{})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "fin", Column: "id", Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Migration.ID
	finalizing := func(session int64) {
		t.Helper()
		if _, err := b.pool.Exec(ctx, `UPDATE batched_background_migrations SET status = 5, finalizer_session = $2 WHERE id = $1`, id, session); err != nil {
			t.Fatal(err)
		}
	}
	// Alive: this engine's own session.
	finalizing(e.Session())
	if ids, err := e.ReviveFinalizing(ctx, 0); err != nil || len(ids) != 0 {
		t.Fatalf("revived a migration whose finalizer is alive: %v %v", ids, err)
	}
	if _, err := e.Resume(ctx, id); !errors.Is(err, batched.ErrInvalidState) {
		t.Fatalf("resume while the finalizer is alive: %v", err)
	}
	// Gone: a session number nobody holds.
	finalizing(1 << 30)
	m, err := e.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if m.HoldReason == nil || !strings.Contains(*m.HoldReason, "finalize process is gone") {
		t.Fatalf("reason %v", m.HoldReason)
	}
	got, err := e.Resume(ctx, id)
	if err != nil || got.Status != batched.Active {
		t.Fatalf("resume: %+v, %v", got, err)
	}
}

// The statement check at queue time waits for the table's lock only
// bbm.lock_timeout: behind a CREATE INDEX (SHARE lock) it is skipped and
// the migration is queued, not refused or left waiting.
func TestQueueCheckSkippedBehindALock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "users", 10)
	e := b.engine(t, batched.Config{Health: batched.HealthConfig{LockTimeout: 50 * time.Millisecond}})
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, `LOCK TABLE users IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "users", Column: "id", Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil || res.Existing {
		t.Fatalf("queue behind a SHARE lock: %+v %v", res, err)
	}
}
