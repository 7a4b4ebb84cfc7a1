package batched

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// An engine whose own heartbeat the database has not seen for the grace
// judges no other engine dead: behind a pooler whose connections were all
// busy, its rescue and every heartbeat waited alike. Once its own heartbeat
// is fresh, a batch whose engine is gone is taken over.
func TestRescueNeedsTheRescuerAlive(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	pool := schemaPool(t)
	var mig int64
	if err := pool.QueryRow(ctx, `
		WITH s AS (INSERT INTO ferry_bbm_sessions (id, identity, heartbeat_at) VALUES
			(101, 'rescuer', now() - interval '1 minute'), (102, 'stalled', now() - interval '1 minute'))
		INSERT INTO batched_background_migrations (job_class_name, table_name, column_name, batch_size, sub_batch_size, status, max_value)
		VALUES ('CountAndCopy', 'rescued', 'id', 10, 10, 1, 100) RETURNING id`).Scan(&mig); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at, worker_session, worker_identity, attempts)
		VALUES ($1, 1, 10, 10, 10, 1, now(), 102, 'stalled', 1)`, mig); err != nil {
		t.Fatal(err)
	}
	// Settled long ago as far as this process knows, session 101.
	e := settledEngine(t, pool, 101)
	rescue := func() int {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(context.Background()) }()
		n, err := e.rescue(ctx, tx, mig)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := rescue(); n != 0 {
		t.Fatalf("a rescuer the database has not seen for a minute took over %d batch(es)", n)
	}
	if _, err := pool.Exec(ctx, `UPDATE ferry_bbm_sessions SET heartbeat_at = now() WHERE id = 101`); err != nil {
		t.Fatal(err)
	}
	if n := rescue(); n != 1 {
		t.Fatalf("a live rescuer took over %d batch(es) of a gone engine, want 1", n)
	}
}

// The scheduler's revival of migrations whose finalizer is gone follows
// the same rule; an operator's resume of one does not need a session.
func TestReviveFinalizingNeedsTheReviverAlive(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	pool := schemaPool(t)
	if _, err := pool.Exec(ctx, `
		INSERT INTO ferry_bbm_sessions (id, identity, heartbeat_at) VALUES
			(201, 'reviver', now() - interval '1 minute'), (202, 'finalizer', now() - interval '1 minute');
		INSERT INTO batched_background_migrations (job_class_name, table_name, column_name, batch_size, sub_batch_size, status, max_value, finalizer_session)
		VALUES ('CountAndCopy', 'revived_a', 'id', 10, 10, 5, 100, 202), ('CountAndCopy', 'revived_b', 'id', 10, 10, 5, 100, 202)`); err != nil {
		t.Fatal(err)
	}
	var a, b int64
	if err := pool.QueryRow(ctx, `SELECT min(id), max(id) FROM batched_background_migrations`).Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	e := settledEngine(t, pool, 201)
	if ids, err := e.ReviveFinalizing(ctx, 0); err != nil || len(ids) != 0 {
		t.Fatalf("a reviver the database has not seen for a minute revived %v (%v)", ids, err)
	}
	if ids, err := e.ReviveFinalizing(ctx, a); err != nil || len(ids) != 1 {
		t.Fatalf("an operator's resume of %d revived %v (%v)", a, ids, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE ferry_bbm_sessions SET heartbeat_at = now() WHERE id = 201`); err != nil {
		t.Fatal(err)
	}
	if ids, err := e.ReviveFinalizing(ctx, 0); err != nil || len(ids) != 1 || ids[0] == a {
		t.Fatalf("a live reviver revived %v (%v); want [%d]", ids, err, b)
	}
}

// schemaPool is a pool on a new database with ferry's tables.
func schemaPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(testenv.Context(t), testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := ferryschema.Apply(testenv.Context(t), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// settledEngine is an engine that believes itself settled long ago under
// session, whose row (and heartbeat) the test writes itself.
func settledEngine(t *testing.T, pool *pgxpool.Pool, session int64) *Engine {
	t.Helper()
	e := NewEngine(pool, Config{Registry: NewRegistry(), Health: HealthConfig{Disabled: true}})
	t.Cleanup(e.Close)
	e.session, e.settledFrom = session, time.Now().Add(-time.Hour)
	return e
}

// Pause-all stops new batches of a migration that has batches running
// too: one with parallel batches always has one, so checking only when
// none ran let it go on under "all migrations paused".
func TestPauseAllStopsParallelBatches(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	pool := schemaPool(t)
	var mig int64
	if _, err := pool.Exec(ctx, `CREATE TABLE paused_all_t (id int PRIMARY KEY, v int, v_big bigint);
		INSERT INTO paused_all_t SELECT g, g FROM generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `
		WITH s AS (INSERT INTO ferry_bbm_sessions (id, identity, heartbeat_at) VALUES (301, 'me', now()), (302, 'other', now()))
		INSERT INTO batched_background_migrations (job_class_name, table_name, column_name, batch_size, sub_batch_size, status, max_value, max_parallel_batches)
		VALUES ('CopyColumnUsingBackgroundMigrationJob', 'paused_all_t', 'id', 10, 10, 1, 100, 3) RETURNING id`).Scan(&mig); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE batched_background_migrations SET job_arguments = '[["v"],["v_big"]]'`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at, worker_session, worker_identity, attempts)
		VALUES ($1, 1, 10, 10, 10, 1, now(), 302, 'other', 1)`, mig); err != nil {
		t.Fatal(err)
	}
	e := settledEngine(t, pool, 301)
	if err := e.SetPausedAll(ctx, true); err != nil {
		t.Fatal(err)
	}
	cl, out, err := e.claim(ctx, mig, modeBackground)
	if cl != nil || out != NotExecutable || err != nil {
		t.Fatalf("claim under pause-all with a batch running: %v, %s, %v; want none", cl, out, err)
	}
	var running int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE status = 1`).Scan(&running); err != nil || running != 1 {
		t.Fatalf("%d batches running (%v), want the one that was", running, err)
	}
	// Resumed: a second batch beside the running one.
	if err := e.SetPausedAll(ctx, false); err != nil {
		t.Fatal(err)
	}
	if cl, out, err := e.claim(ctx, mig, modeBackground); cl == nil || err != nil {
		t.Fatalf("claim after resume-all: %v, %s, %v; want a batch", cl, out, err)
	}
}

// A worker killed while its batch moved forward (it committed sub-batches
// in this try) used no attempt: killing workers again and again never
// fails a batch that progresses. A try that committed nothing is charged.
func TestRescueChargesOnlyTriesThatMadeNoProgress(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	pool := schemaPool(t)
	var mig int64
	if err := pool.QueryRow(ctx, `
		WITH s AS (INSERT INTO ferry_bbm_sessions (id, identity, heartbeat_at) VALUES
			(401, 'rescuer', now()), (402, 'killed', now() - interval '1 hour'))
		INSERT INTO batched_background_migrations (job_class_name, table_name, column_name, batch_size, sub_batch_size, status, max_value)
		VALUES ('CountAndCopy', 'forward_t', 'id', 10, 10, 1, 100) RETURNING id`).Scan(&mig); err != nil {
		t.Fatal(err)
	}
	// Both on their last attempt; the first moved from 20 to 40 in it.
	if _, err := pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at, worker_session, worker_identity, attempts, cursor_value, metrics)
		VALUES ($1, 1, 50, 50, 10, 1, now(), 402, 'killed', 3, 40, '{"attempt_from": 20}'),
		       ($1, 51, 100, 50, 10, 1, now(), 402, 'killed', 3, 70, '{"attempt_from": 70}')`, mig); err != nil {
		t.Fatal(err)
	}
	e := settledEngine(t, pool, 401)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.rescue(ctx, tx, mig); err != nil || n != 2 {
		t.Fatalf("rescued %d (%v), want 2", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT j.attempts, l.exception_message FROM batched_background_migration_jobs j
		JOIN batched_background_migration_job_transition_logs l ON l.batched_background_migration_job_id = j.id ORDER BY j.id`)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		Attempts int
		Msg      string
	}
	gs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[got])
	if err != nil || len(gs) != 2 {
		t.Fatalf("%v %v", gs, err)
	}
	if gs[0].Attempts != 2 || !strings.Contains(gs[0].Msg, "this try moved it forward, so it used no attempt") {
		t.Errorf("the batch that moved forward: %+v; want 2 attempts used and said why", gs[0])
	}
	if gs[1].Attempts != 3 || !strings.Contains(gs[1].Msg, "that was its last attempt") {
		t.Errorf("the batch that did not: %+v; want its last attempt used", gs[1])
	}
}
