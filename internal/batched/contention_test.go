package batched_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// With other sessions writing to the table, the migration paces itself:
// jobs record a duty cycle below 1 and `bbm show` gets the reason while it
// lasts. Without them it runs at full duty. Either way every row is
// migrated exactly once.
func TestContentionPacing(t *testing.T) {
	t.Parallel()
	if testenv.ViaPgBouncer() {
		t.Skip("tells sessions apart by application_name; behind PgBouncer a server connection may carry another client's (README: PgBouncer)")
	}
	for _, tc := range []struct {
		name    string
		writers int
	}{{"idle", 0}, {"concurrent writers", 4}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := testenv.Context(t)
			const rows = 20000
			b.table(t, "paced", rows)
			if _, err := b.pool.Exec(ctx, `ALTER TABLE paced ADD COLUMN w int NOT NULL DEFAULT 0`); err != nil {
				t.Fatal(err)
			}
			e := b.engine(t, batched.Config{Health: batched.HealthConfig{Interval: time.Millisecond}})
			res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "paced", Column: "id", BatchSize: 1000, SubBatchSize: 100})
			if err != nil {
				t.Fatal(err)
			}
			id := res.Migration.ID

			wctx, stop := context.WithCancel(ctx)
			// The writers stop once the pacing is on record: what is tested
			// is that it engages, not how long a paced copy of the rest
			// takes (the closed loop may hold it near its floor).
			writersCtx, stopWriters := context.WithCancel(wctx)
			defer stopWriters()
			var wg sync.WaitGroup
			var writes atomic.Int64
			for range tc.writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for writersCtx.Err() == nil {
						if _, err := b.pool.Exec(writersCtx, `UPDATE paced SET w = w + 1 WHERE id = $1`, 3*(rand.IntN(rows)+1)); err == nil {
							writes.Add(1)
						}
					}
				}()
			}
			// Watch the reason `bbm show` prints.
			var reasons sync.Map
			wg.Add(1)
			go func() {
				defer wg.Done()
				for wctx.Err() == nil {
					if m, err := e.Get(wctx, id); err == nil && m.HoldReason != nil {
						reasons.Store(*m.HoldReason, true)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
			if tc.writers > 0 {
				testenv.Eventually(t, 5*time.Second, "writers", func() bool { return writes.Load() > 100 })
			}
			runErr := make(chan error, 1)
			go func() { runErr <- e.RunLocal(ctx, 1, true) }()
			if tc.writers > 0 {
				testenv.Eventually(t, 60*time.Second, "the pacing recorded as the reason", func() bool {
					seen := false
					reasons.Range(func(k, _ any) bool {
						seen = strings.HasPrefix(k.(string), "contention: ")
						return !seen
					})
					return seen || len(runErr) > 0
				})
				stopWriters()
			}
			err = <-runErr
			stop()
			wg.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if s := b.status(t, id); s != batched.Finished {
				t.Fatalf("status %s", s)
			}
			b.checkExactlyOnce(t, "paced")

			var jobs, withPacing, paced int
			var minDuty float64
			if err := b.pool.QueryRow(ctx, `SELECT count(*), count(metrics->'pacing'),
					count(*) FILTER (WHERE (metrics->'pacing'->>'min_duty_cycle')::float8 < 1),
					coalesce(min((metrics->'pacing'->>'min_duty_cycle')::float8), 1)
				FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1 AND status = 3`, id).
				Scan(&jobs, &withPacing, &paced, &minDuty); err != nil {
				t.Fatal(err)
			}
			var sawReason []string
			reasons.Range(func(k, _ any) bool {
				if strings.HasPrefix(k.(string), "contention: ") {
					sawReason = append(sawReason, k.(string))
				}
				return true
			})
			first := ""
			if len(sawReason) > 0 {
				first = sawReason[0]
			}
			t.Logf("%d jobs (%d with pacing metrics), %d paced, lowest duty %.2f, %d writes; %d reasons seen, e.g. %q",
				jobs, withPacing, paced, minDuty, writes.Load(), len(sawReason), first)
			if withPacing != jobs || jobs == 0 {
				t.Fatalf("%d of %d jobs have pacing metrics", withPacing, jobs)
			}
			// Paced sub-batches take turns on the shared pacing clock.
			var clockUsed bool
			if err := b.pool.QueryRow(ctx, `SELECT next_at > '-infinity' FROM ferry_bbm_pace`).Scan(&clockUsed); err != nil {
				t.Fatal(err)
			}
			if tc.writers == 0 {
				if paced != 0 || len(sawReason) != 0 || clockUsed {
					t.Fatalf("paced on an idle database: %d jobs, reasons %q, pacing clock used %v", paced, sawReason, clockUsed)
				}
				return
			}
			if !clockUsed {
				t.Fatal("paced sub-batches never used the shared pacing clock")
			}
			if paced == 0 || minDuty >= 1 {
				t.Fatal("never paced while other sessions wrote to the table")
			}
			if len(sawReason) == 0 {
				t.Fatal("the pacing was never recorded as the migration's reason")
			}
		})
	}
}

// A session that waits on rows a sub-batch has locked is seen by that
// sub-batch before it commits: the job records it and the statements that
// follow are shortened. The sub-batch is held at a point where its rows
// are locked (an advisory lock the test holds), so the writer is certain
// to meet them.
func TestSubBatchSeesSessionsItBlocks(t *testing.T) {
	t.Parallel()
	if testenv.ViaPgBouncer() {
		t.Skip("tells sessions apart by application_name; behind PgBouncer a server connection may carry another client's (README: PgBouncer)")
	}
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "blocking", 3000)
	const gate = 4242
	b.reg.MustRegister(batched.Class{Name: "GatedCopy", Plan: func(batched.PlanContext) (*batched.Plan, error) {
		return &batched.Plan{Do: func(ctx context.Context, tx pgx.Tx, lo, hi int64) (int64, error) {
			tag, err := tx.Exec(ctx, `UPDATE blocking SET n = n + 1, v_big = v WHERE id BETWEEN $1 AND $2`, lo, hi)
			if err != nil {
				return 0, err
			}
			_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, gate)
			return tag.RowsAffected(), err
		}}, nil
	}})
	e := b.engine(t, batched.Config{Health: batched.HealthConfig{LockTimeout: time.Minute}})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "GatedCopy", Table: "blocking", Column: "id", BatchSize: 1000, SubBatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	holder, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, gate); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() {
		_, err := e.RunBatch(ctx, res.Migration.ID)
		ran <- err
	}()
	waitingOn := func(event string) func() bool {
		return func() bool {
			var n int
			_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = $1`, event).Scan(&n)
			return n > 0
		}
	}
	testenv.Eventually(t, 10*time.Second, "sub-batch at the gate", waitingOn("advisory"))
	// id 3 is the table's first row: the first sub-batch has it locked.
	wrote := make(chan error, 1)
	go func() {
		_, err := b.pool.Exec(ctx, `UPDATE blocking SET v = v WHERE id = 3`)
		wrote <- err
	}()
	testenv.Eventually(t, 10*time.Second, "writer waiting on the sub-batch", waitingOn("transactionid"))
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, gate); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	var blocked int
	var minCap float64
	if err := b.pool.QueryRow(ctx, `SELECT coalesce(sum((metrics->'pacing'->>'blocked_sessions')::int), 0),
			coalesce(min((metrics->'pacing'->>'min_stmt_cap_ms')::float8), 0)
		FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, res.Migration.ID).Scan(&blocked, &minCap); err != nil {
		t.Fatal(err)
	}
	if blocked != 1 || minCap <= 0 {
		t.Fatalf("job recorded %d blocked sessions and a statement cap of %.1fms; want 1 and a cap", blocked, minCap)
	}
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "blocking")
}
