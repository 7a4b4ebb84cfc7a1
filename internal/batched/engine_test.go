package batched_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// countClass increments n on each row it visits, so a row migrated twice
// shows up as n = 2 (copying alone is idempotent and would hide it).
var countClass = batched.Class{Name: "CountAndCopy", NumArgs: 0, Plan: func(pc batched.PlanContext) (*batched.Plan, error) {
	return &batched.Plan{Set: `n = n + 1, v_big = v`}, nil
}}

type bundle struct {
	url  string
	pool *pgxpool.Pool
	reg  *batched.Registry
}

func setup(t *testing.T) *bundle {
	t.Helper()
	url := testenv.DatabaseURL(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ctx := testenv.Context(t)
	if err := ferryschema.Apply(ctx, pool); err != nil {
		t.Fatal(err)
	}
	reg := batched.NewRegistry()
	reg.MustRegister(countClass)
	return &bundle{url: url, pool: pool, reg: reg}
}

func (b *bundle) engine(t *testing.T, cfg batched.Config) *batched.Engine {
	t.Helper()
	url := b.url
	if !strings.Contains(url, "application_name=") {
		url += sepFor(url) + "application_name=ferry-test"
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Registry = b.reg
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	if cfg.TargetBatchDuration == 0 {
		cfg.TargetBatchDuration = 200 * time.Millisecond
	}
	e := batched.NewEngine(pool, cfg)
	t.Cleanup(func() { e.Close(); pool.Close() })
	return e
}

// direct is a pool on the bundle's database that bypasses PgBouncer (in
// CI's pass through it), for statements about specific backends: behind
// the pooler a server connection's application_name may be another
// client's, and the test could terminate its own connection.
func (b *bundle) direct(t *testing.T) *pgxpool.Pool {
	t.Helper()
	if !testenv.ViaPgBouncer() {
		return b.pool
	}
	pool, err := pgxpool.New(context.Background(), testenv.DirectURL(t, b.url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func sepFor(url string) string {
	if strings.Contains(url, "?") {
		return "&"
	}
	return "?"
}

// table creates name(id, v, v_big, n) with rows ids 1..rows*3 step 3 (gaps),
// minus a few deleted.
func (b *bundle) table(t *testing.T, name string, rows int) {
	t.Helper()
	ctx := testenv.Context(t)
	q := pgx.Identifier{name}.Sanitize()
	_, err := b.pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (id bigint PRIMARY KEY, v int NOT NULL, v_big bigint, n int NOT NULL DEFAULT 0);
		INSERT INTO %s (id, v) SELECT g * 3, g FROM generate_series(1, %d) g;
		DELETE FROM %s WHERE id %% 97 = 0; ANALYZE %s`, q, q, rows, q, q))
	if err != nil {
		t.Fatal(err)
	}
}

func (b *bundle) checkExactlyOnce(t *testing.T, name string) {
	t.Helper()
	var total, bad, twice int64
	var sumV, sumBig *int64
	err := b.pool.QueryRow(testenv.Context(t), `SELECT count(*), count(*) FILTER (WHERE v_big IS DISTINCT FROM v), count(*) FILTER (WHERE n <> 1),
		sum(v), sum(v_big) FROM `+pgx.Identifier{name}.Sanitize()).Scan(&total, &bad, &twice, &sumV, &sumBig)
	if err != nil {
		t.Fatal(err)
	}
	if bad != 0 || twice != 0 || *sumV != *sumBig {
		t.Fatalf("%s: %d rows, %d not copied, %d not migrated exactly once, checksum %d vs %d", name, total, bad, twice, *sumV, *sumBig)
	}
}

func (b *bundle) status(t *testing.T, id int64) batched.Status {
	t.Helper()
	var s int16
	if err := b.pool.QueryRow(context.Background(), `SELECT status FROM batched_background_migrations WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return batched.Status(s)
}

func TestExactlyOnceParallelEngines(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "items", 60000)
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "items", Column: "id", MaxParallel: 4, BatchSize: 500, SubBatchSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 3 {
		en := e
		if i > 0 {
			en = b.engine(t, batched.Config{})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := en.RunLocal(ctx, 2, true); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s := b.status(t, res.Migration.ID); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	b.checkExactlyOnce(t, "items")
	// job ranges never overlap
	var overlaps int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs a JOIN batched_background_migration_jobs b
		ON a.id < b.id AND a.batched_background_migration_id = b.batched_background_migration_id
		AND a.min_value <= b.max_value AND b.min_value <= a.max_value`).Scan(&overlaps); err != nil || overlaps != 0 {
		t.Fatalf("overlapping jobs: %d (%v)", overlaps, err)
	}
}

// A class that fails the first attempt of some sub-batches, and a statement
// timeout on a slow row: retries, sub-batch reduction and a split, and
// still every row exactly once.
func TestExactlyOnceRetriesAndSplits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "flaky", 6000)
	var fails atomic.Int32
	b.reg.MustRegister(batched.Class{Name: "FlakyCount", NumArgs: 0, Plan: func(pc batched.PlanContext) (*batched.Plan, error) {
		return &batched.Plan{Do: func(ctx context.Context, tx pgx.Tx, lo, hi int64) (int64, error) {
			tag, err := tx.Exec(ctx, `UPDATE flaky SET n = n + 1, v_big = v WHERE id BETWEEN $1 AND $2`, lo, hi)
			if err != nil {
				return 0, err
			}
			if lo <= 3000 && 3000 <= hi && fails.Add(1) <= 2 {
				return 0, errors.New("injected failure")
			}
			return tag.RowsAffected(), nil
		}}, nil
	}})
	// A trigger makes one row slow enough to hit the statement timeout.
	if _, err := b.pool.Exec(ctx, `CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 9000 AND NOT EXISTS (SELECT 1 FROM slow_done) THEN PERFORM pg_sleep(0.5); END IF; RETURN NEW; END $$;
		CREATE TABLE slow_done (x int);
		CREATE TRIGGER slow BEFORE UPDATE ON flaky FOR EACH ROW EXECUTE FUNCTION slow_row()`); err != nil {
		t.Fatal(err)
	}
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "FlakyCount", Table: "flaky", Column: "id", BatchSize: 1000, SubBatchSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE batched_background_migrations SET statement_timeout_ms = 200 WHERE id = $1`, res.Migration.ID); err != nil {
		t.Fatal(err)
	}
	// After 4 timeouts (3 attempts + split), let the slow row through.
	go func() {
		testenv.Eventually(t, time.Minute, "timeouts", func() bool {
			var n int
			_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class = 'ActiveRecord::QueryCanceled'`).Scan(&n)
			return n >= 3
		})
		_, _ = b.pool.Exec(ctx, `INSERT INTO slow_done VALUES (1)`)
	}()
	if err := e.RunLocal(ctx, 2, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, res.Migration.ID); s != batched.Finished {
		jobs, _ := e.Jobs(ctx, res.Migration.ID, false, 100)
		js, _ := json.Marshal(jobs)
		t.Fatalf("status %s, jobs %s", s, js)
	}
	b.checkExactlyOnce(t, "flaky")
	var injected, timeouts, splits int
	_ = b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE exception_message LIKE '%injected%'), count(*) FILTER (WHERE exception_class = 'ActiveRecord::QueryCanceled')
		FROM batched_background_migration_job_transition_logs`).Scan(&injected, &timeouts)
	_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE batch_size < 1000 AND max_value < 17000`).Scan(&splits)
	if injected < 2 || timeouts < 3 {
		t.Fatalf("expected injected failures and timeouts in the log, got %d and %d", injected, timeouts)
	}
	t.Logf("injected %d, timeouts %d, small jobs %d", injected, timeouts, splits)
	// Every job succeeded in the end: none is shown with the error of an
	// attempt that a retry made good.
	jobs, err := e.Jobs(ctx, res.Migration.ID, false, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if j.ErrorClass != nil || j.ErrorMessage != nil {
			t.Fatalf("succeeded job %d shown with error %v: %v", j.ID, deref(j.ErrorClass), deref(j.ErrorMessage))
		}
	}
}

// A CopyColumn migration whose columns were all dropped after it was
// queued skips its batches, as GitLab does, but says so in the log: a
// migration that copies nothing must not finish unseen.
func TestSkippedBatchesAreLogged(t *testing.T) {
	t.Parallel()
	b := setup(t) // its registry has the built-in classes
	ctx := testenv.Context(t)
	b.table(t, "gone", 3000)
	core, logs := observer.New(zap.WarnLevel)
	e := b.engine(t, batched.Config{Logger: zap.New(core)})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "gone", Column: "id",
		Args: []byte(`[["v"],["v_big"]]`), BatchSize: 1000, SubBatchSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `ALTER TABLE gone DROP COLUMN v_big`); err != nil {
		t.Fatal(err)
	}
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, res.Migration.ID); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	warned := logs.FilterMessageSnippet("no column pair to copy exists").All()
	if len(warned) != 1 { // once a minute, per migration
		t.Fatalf("skip warned %d times, want once: %v", len(warned), logs.All())
	}
}
