package batched_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// A long-open transaction elsewhere puts the migration on hold with the
// reason recorded (shown by `bbm show`); once it ends, the migration
// finishes.
func TestLongTransactionHoldsMigration(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "held", 20000)
	e := b.engine(t, batched.Config{Health: batched.HealthConfig{LongTransaction: 100 * time.Millisecond, MaxHold: 200 * time.Millisecond}})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "held", Column: "id", BatchSize: 500, SubBatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "transaction age", func() bool {
		var n int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND xact_start < now() - interval '150 ms' AND pid <> pg_backend_pid()`).Scan(&n)
		return n > 0
	})
	if out, err := e.RunBatch(ctx, res.Migration.ID); err != nil || out != batched.Ran {
		t.Fatalf("first batch: %v %v", out, err)
	}
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.OnHoldUntil == nil || m.HoldReason == nil || !strings.Contains(*m.HoldReason, "long_transaction") {
		t.Fatalf("not held: %+v", m.Migration)
	}
	if out, _ := e.RunBatch(ctx, res.Migration.ID); out != batched.NotExecutable && time.Now().Before(*m.OnHoldUntil) {
		t.Fatalf("ran while on hold: %v", out)
	}
	_ = tx.Rollback(ctx)
	conn.Release()
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "held")
}

// Another session holds locks our sub-batches need: the sub-batch gives up
// after the lock timeout instead of queueing (and making others queue
// behind the rows it already locked), the rest of the batch is given back
// without using an attempt, and the migration goes on hold with a reason
// naming the session. Once the lock is released it finishes, every row
// migrated exactly once.
func TestLockWaitHoldsMigration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		lock string // run in the other session's transaction
	}{
		// Rows from ~300 rows into the second batch on: its first
		// sub-batches commit, then it waits.
		{"row lock", `SELECT id FROM %s WHERE id > $1 + 900 FOR UPDATE`},
		// The whole table: the first sub-batch already waits.
		{"table lock", `LOCK TABLE %s IN SHARE MODE`},
		// Even reading the next range waits (the claim).
		{"exclusive table lock", `LOCK TABLE %s IN ACCESS EXCLUSIVE MODE`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := testenv.Context(t)
			b.table(t, "locked", 20000)
			e := b.engine(t, batched.Config{Health: batched.HealthConfig{LockTimeout: 100 * time.Millisecond, MaxHold: 200 * time.Millisecond}})
			res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "locked", Column: "id", BatchSize: 2000, SubBatchSize: 200, MaxBatchSize: 2000})
			if err != nil {
				t.Fatal(err)
			}
			id := res.Migration.ID
			if out, err := e.RunBatch(ctx, id); err != nil || out != batched.Ran {
				t.Fatalf("first batch: %v %v", out, err)
			}
			tx, err := b.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			var args []any
			if strings.Contains(tc.lock, "$1") {
				var firstEnd int64
				if err := b.pool.QueryRow(ctx, `SELECT max(max_value) FROM batched_background_migration_jobs`).Scan(&firstEnd); err != nil {
					t.Fatal(err)
				}
				args = append(args, firstEnd)
			}
			if _, err := tx.Exec(ctx, fmt.Sprintf(tc.lock, "locked"), args...); err != nil {
				t.Fatal(err)
			}
			var holder int
			if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder); err != nil {
				t.Fatal(err)
			}
			if out, err := e.RunBatch(ctx, id); err != nil || out == batched.Completed {
				t.Fatalf("second batch: %v %v", out, err)
			}
			m, err := e.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if m.OnHoldUntil == nil || m.HoldReason == nil || !strings.Contains(*m.HoldReason, "lock_waits") ||
				!strings.Contains(*m.HoldReason, fmt.Sprintf("pid %d", holder)) {
				t.Fatalf("not held for the lock: %+v (reason %v)", m.Migration, deref(m.HoldReason))
			}
			// The waiting batch is back to pending (or its done part
			// succeeded and the rest goes back to the cursor), no attempt
			// used, nothing failed.
			var failed, pendingAttempts int
			if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 2), coalesce(sum(attempts) FILTER (WHERE status = 0), 0)
				FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, id).Scan(&failed, &pendingAttempts); err != nil {
				t.Fatal(err)
			}
			if failed != 0 || pendingAttempts != 0 {
				t.Fatalf("lock wait counted as a failure: %d failed jobs, %d attempts on pending ones", failed, pendingAttempts)
			}
			var logged int
			if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs l
				JOIN batched_background_migration_jobs j ON j.id = l.batched_background_migration_job_id
				WHERE j.batched_background_migration_id = $1 AND l.exception_class = 'Ferry::LockWait'`, id).Scan(&logged); err != nil {
				t.Fatal(err)
			}
			if tc.name == "table lock" && logged == 0 {
				t.Fatal("the given-back batch has no Ferry::LockWait transition")
			}
			// Held: nothing runs until the hold expires. (If the machine
			// was slow enough for the hold to pass already, the batch
			// just waits for the lock again.)
			if out, _ := e.RunBatch(ctx, id); out != batched.NotExecutable && time.Now().Before(*m.OnHoldUntil) {
				t.Fatalf("ran while on hold: %v", out)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if err := e.RunLocal(ctx, 1, true); err != nil {
				t.Fatal(err)
			}
			if s := b.status(t, id); s != batched.Finished {
				t.Fatalf("status %s", s)
			}
			b.checkExactlyOnce(t, "locked")
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// The lock-wait indicator on real waits: a session of the migration (by
// its application_name) holds a row lock another session waits for.
func TestLockWaitIndicatorSeesBlockedSessions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "contended", 100)
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "contended", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Migration
	ours, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ours.Rollback(ctx) }()
	if _, err := ours.Exec(ctx, fmt.Sprintf(`SET LOCAL application_name = 'ferry-bbm:%d'; UPDATE contended SET n = n WHERE id = 3`, m.ID)); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := b.pool.Exec(ctx, `UPDATE contended SET v = v WHERE id = 3`)
		blocked <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the other session waits", func() bool {
		var n int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return n > 0
	})
	sigs, errs := batched.EvaluateAll(e, ctx, m, tableOID(t, b, "contended"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(sigs) != 1 || sigs[0].Indicator != "lock_waits" || !sigs[0].Stop || !strings.Contains(sigs[0].Reason, "1 session(s) wait on our locks") {
		t.Fatalf("signals: %+v", sigs)
	}
	if err := ours.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
}

func tableOID(t *testing.T, b *bundle, name string) uint32 {
	t.Helper()
	var oid uint32
	if err := b.pool.QueryRow(testenv.Context(t), `SELECT $1::regclass::oid`, name).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

// fakeCatalog creates tables shaped like the statistics views the health
// indicators read and points e at them: a test database has no standby,
// and autovacuum cannot be started on demand.
func fakeCatalog(t *testing.T, b *bundle, e *batched.Engine) {
	t.Helper()
	_, err := b.pool.Exec(testenv.Context(t), `
		CREATE TABLE fake_activity (pid int, datname name DEFAULT current_database(), backend_type text,
			application_name text DEFAULT '', state text, wait_event_type text, query text, xact_start timestamptz, state_change timestamptz);
		CREATE TABLE fake_progress_vacuum (pid int, relid oid);
		CREATE TABLE fake_replication (application_name text, replay_lsn pg_lsn, replay_lag interval)`)
	if err != nil {
		t.Fatal(err)
	}
	batched.UseCatalog(e, "public.fake_activity", "public.fake_progress_vacuum", "public.fake_replication")
}

func TestAutovacuumIndicator(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "vac", 100)
	b.table(t, "other", 10)
	e := b.engine(t, batched.Config{})
	fakeCatalog(t, b, e)
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "vac", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	oid := tableOID(t, b, "vac")
	for _, tc := range []struct {
		name     string
		rows     string // inserted into the fake views
		want     bool
		stop     bool
		contains string
	}{
		{name: "nothing running"},
		{name: "autovacuum on another table", rows: `
			INSERT INTO fake_activity (pid, backend_type, state, query) VALUES (101, 'autovacuum worker', 'active', 'autovacuum: VACUUM public.other');
			INSERT INTO fake_progress_vacuum VALUES (101, 'other'::regclass)`},
		{name: "manual VACUUM of our table", rows: `
			INSERT INTO fake_activity (pid, backend_type, state, query) VALUES (102, 'client backend', 'active', 'VACUUM vac');
			INSERT INTO fake_progress_vacuum VALUES (102, 'vac'::regclass)`},
		{name: "autovacuum on our table", want: true, contains: "autovacuum is running on vac", rows: `
			INSERT INTO fake_activity (pid, backend_type, state, query) VALUES (103, 'autovacuum worker', 'active', 'autovacuum: VACUUM ANALYZE public.vac');
			INSERT INTO fake_progress_vacuum VALUES (103, 'vac'::regclass)`},
		{name: "wraparound autovacuum on our table", want: true, stop: true, contains: "(to prevent wraparound)", rows: `
			INSERT INTO fake_activity (pid, backend_type, state, query) VALUES (104, 'autovacuum worker', 'active', 'autovacuum: VACUUM public.vac (to prevent wraparound)');
			INSERT INTO fake_progress_vacuum VALUES (104, 'vac'::regclass)`},
	} {
		if _, err := b.pool.Exec(ctx, `TRUNCATE fake_activity, fake_progress_vacuum`+";"+tc.rows); err != nil {
			t.Fatal(tc.name, err)
		}
		sigs, errs := batched.EvaluateAll(e, ctx, res.Migration, oid)
		if len(errs) > 0 {
			t.Fatal(tc.name, errs)
		}
		if !tc.want {
			if len(sigs) != 0 {
				t.Errorf("%s: unexpected %+v", tc.name, sigs)
			}
			continue
		}
		if len(sigs) != 1 || sigs[0].Indicator != "autovacuum" || sigs[0].Stop != tc.stop || !strings.Contains(sigs[0].Reason, tc.contains) {
			t.Errorf("%s: got %+v", tc.name, sigs)
		}
	}

	// Applied after a batch: the wraparound vacuum (left in the fake view
	// by the last case) holds the migration with the reason recorded.
	if out, err := e.RunBatch(ctx, res.Migration.ID); err != nil || out != batched.Ran {
		t.Fatalf("batch: %v %v", out, err)
	}
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.OnHoldUntil == nil || !strings.Contains(deref(m.HoldReason), "autovacuum: autovacuum is running on vac (to prevent wraparound)") {
		t.Fatalf("not held: %+v reason %s", m.Migration, deref(m.HoldReason))
	}
}

// An ordinary autovacuum only slows the migration to one batch at a time.
func TestAutovacuumSlowsMigration(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "vac", 5000)
	e := b.engine(t, batched.Config{})
	fakeCatalog(t, b, e)
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "vac", Column: "id", BatchSize: 500, SubBatchSize: 100, MaxParallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO fake_activity (pid, backend_type, state, query) VALUES (103, 'autovacuum worker', 'active', 'autovacuum: VACUUM public.vac');
		INSERT INTO fake_progress_vacuum VALUES (103, 'vac'::regclass)`); err != nil {
		t.Fatal(err)
	}
	if out, err := e.RunBatch(ctx, res.Migration.ID); err != nil || out != batched.Ran {
		t.Fatalf("batch: %v %v", out, err)
	}
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.SlowUntil == nil || m.OnHoldUntil != nil && m.OnHoldUntil.After(time.Now()) || !strings.Contains(deref(m.HoldReason), "autovacuum is running on vac") {
		t.Fatalf("not slowed (or held): %+v reason %s", m.Migration, deref(m.HoldReason))
	}
	// The sub-batches' probe saw it too (pacing holds the closed loop's
	// duty at the floor while it lasts); once it is gone, they do not.
	if _, err := b.pool.Exec(ctx, `TRUNCATE fake_activity, fake_progress_vacuum`); err != nil {
		t.Fatal(err)
	}
	if err := e.RunLocal(ctx, 2, true); err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "vac")
	var saw []bool
	if err := b.pool.QueryRow(ctx, `SELECT array_agg(coalesce((metrics->'pacing'->>'vacuum')::bool, false) ORDER BY id)
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, res.Migration.ID).Scan(&saw); err != nil {
		t.Fatal(err)
	}
	if len(saw) < 2 || !saw[0] || slices.Contains(saw[1:], true) {
		t.Fatalf("batches that saw the VACUUM: %v, want the first only", saw)
	}
}

func TestReplicationLagIndicator(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "rep", 10)
	e := b.engine(t, batched.Config{Health: batched.HealthConfig{MaxReplicationLagBytes: 1 << 20, MaxReplayLag: 30 * time.Second}})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "rep", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	oid := tableOID(t, b, "rep")

	// The real SQL on this primary: it runs, and there is no standby.
	sigs, errs := batched.EvaluateAll(e, ctx, res.Migration, oid)
	if len(errs) > 0 || len(sigs) > 0 {
		t.Fatalf("on the primary: signals %+v, errors %v", sigs, errs)
	}

	fakeCatalog(t, b, e)
	// A caught-up standby is at the primary's position when the indicator
	// reads it, not when the row was written: tests running beside this
	// one write megabytes of WAL in between.
	if _, err := b.pool.Exec(ctx, `CREATE TABLE fake_standbys (application_name text, replay_lsn pg_lsn, replay_lag interval,
			caught_up bool NOT NULL DEFAULT false);
		CREATE VIEW fake_replication_live AS SELECT application_name,
			CASE WHEN caught_up THEN pg_current_wal_lsn() ELSE replay_lsn END AS replay_lsn, replay_lag FROM fake_standbys`); err != nil {
		t.Fatal(err)
	}
	batched.UseCatalog(e, "public.fake_activity", "public.fake_progress_vacuum", "public.fake_replication_live")
	// Make sure the WAL position is well past 2 MB, so "0/0" is far behind.
	if _, err := b.pool.Exec(ctx, `CREATE TABLE wal_filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 30000) g`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		rows     string
		contains string // empty: no signal
	}{
		{name: "no standby"},
		{name: "standby caught up", rows: `INSERT INTO fake_standbys VALUES ('s1', NULL, interval '200 ms', true)`},
		{name: "standby replays late", contains: "replay lag 45.0s",
			rows: `INSERT INTO fake_standbys VALUES ('s1', NULL, interval '200 ms', true), ('s2', NULL, interval '45 s', true)`},
		{name: "standby far behind in WAL", contains: "replication lag ",
			rows: `INSERT INTO fake_standbys VALUES ('s1', '0/0', NULL)`},
		{name: "standby not replaying yet", rows: `INSERT INTO fake_standbys VALUES ('s1', NULL, NULL)`},
	} {
		if _, err := b.pool.Exec(ctx, `TRUNCATE fake_standbys;`+tc.rows); err != nil {
			t.Fatal(tc.name, err)
		}
		sigs, errs := batched.EvaluateAll(e, ctx, res.Migration, oid)
		if len(errs) > 0 {
			t.Fatal(tc.name, errs)
		}
		switch {
		case tc.contains == "" && len(sigs) != 0:
			t.Errorf("%s: unexpected %+v", tc.name, sigs)
		case tc.contains != "" && (len(sigs) != 1 || sigs[0].Indicator != "replication_lag" || !sigs[0].Stop || !strings.Contains(sigs[0].Reason, tc.contains)):
			t.Errorf("%s: got %+v", tc.name, sigs)
		}
	}
}

// Every indicator's real SQL runs on a primary without error and, on an
// idle test database, says nothing.
func TestIndicatorsRunOnPrimary(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "quiet", 10)
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "quiet", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	sigs, errs := batched.EvaluateAll(e, ctx, res.Migration, tableOID(t, b, "quiet"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, s := range sigs {
		// Other tests' sessions share the server, but none of them use
		// this database or this migration's id.
		t.Errorf("unexpected signal %+v", s)
	}
}

// A WAL archiving backlog above the limit holds a migration, with the
// count in the reason; below it, or with archiving off, nothing.
func TestWALArchiveIndicator(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "walq", 10)
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "walq", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `CREATE TABLE fake_archiver (archive_mode text, current_wal text, last_archived_wal text)`); err != nil {
		t.Fatal(err)
	}
	batched.UseArchiver(e, "public.fake_archiver")
	oid := tableOID(t, b, "walq")
	for _, tc := range []struct {
		name, row, contains string
	}{
		{"far behind", `('on', '000000010000000000000030', '000000010000000000000001')`, "47 WAL segments wait for archiving"},
		{"a little behind", `('on', '000000010000000000000030', '00000001000000000000002D')`, ""},
		{"archiving off", `('off', '000000010000000000000030', NULL)`, ""},
		{"nothing archived yet", `('on', '000000010000000000000030', NULL)`, ""},
	} {
		if _, err := b.pool.Exec(ctx, `TRUNCATE fake_archiver; INSERT INTO fake_archiver VALUES `+tc.row); err != nil {
			t.Fatal(err)
		}
		sigs, errs := batched.EvaluateAll(e, ctx, res.Migration, oid)
		if len(errs) > 0 {
			t.Fatal(tc.name, errs)
		}
		var got *batched.Signal
		for i := range sigs {
			if sigs[i].Indicator == "wal_archive" {
				got = &sigs[i]
			}
		}
		switch {
		case tc.contains == "" && got != nil:
			t.Errorf("%s: unexpected %+v", tc.name, *got)
		case tc.contains != "" && (got == nil || !got.Stop || !strings.Contains(got.Reason, tc.contains)):
			t.Errorf("%s: got %+v, want a hold saying %q", tc.name, sigs, tc.contains)
		}
	}
}
