package bbm_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/jobs/bbm"
)

// A long-open transaction elsewhere puts the migration on hold with the
// reason recorded (shown by `bbm show`); once it ends, the migration
// finishes.
func TestLongTransactionHoldsMigration(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "held", 20000)
	e := b.engine(t, bbm.Config{Health: bbm.HealthConfig{LongTransaction: 100 * time.Millisecond, MaxHold: 200 * time.Millisecond}})
	res, err := e.Queue(ctx, bbm.QueueOptions{Class: "CountAndCopy", Table: "held", Column: "id", BatchSize: 500, SubBatchSize: 100})
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
	if out, err := e.RunBatch(ctx, res.Migration.ID); err != nil || out != bbm.Ran {
		t.Fatalf("first batch: %v %v", out, err)
	}
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.OnHoldUntil == nil || m.HoldReason == nil || !strings.Contains(*m.HoldReason, "long_transaction") {
		t.Fatalf("not held: %+v", m.Migration)
	}
	if out, _ := e.RunBatch(ctx, res.Migration.ID); out != bbm.NotExecutable && time.Now().Before(*m.OnHoldUntil) {
		t.Fatalf("ran while on hold: %v", out)
	}
	_ = tx.Rollback(ctx)
	conn.Release()
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "held")
}
