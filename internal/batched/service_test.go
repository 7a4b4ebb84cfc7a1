package batched_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// A running worker's service whose tables disappear (a `ferry db restore` of
// a backup from before ferry) sets them up again without a restart.
func TestServiceSetsUpDroppedTables(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(testenv.Context(t))
	defer cancel()
	svc := batched.NewService(b.engine(t, batched.Config{}), testenv.Redis(t), zaptest.NewLogger(t))
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	exists := func() bool {
		var ok bool
		err := b.pool.QueryRow(ctx, `SELECT to_regclass('batched_background_migrations') IS NOT NULL
			AND to_regclass('ferry_bbm_sessions') IS NOT NULL`).Scan(&ok)
		return err == nil && ok
	}
	testenv.Eventually(t, 10*time.Second, "the service's session", func() bool {
		var n int
		return b.pool.QueryRow(ctx, `SELECT count(*) FROM ferry_bbm_sessions`).Scan(&n) == nil && n == 1
	})
	if _, err := b.pool.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the tables set up again", func() bool {
		select {
		case err := <-done:
			t.Fatalf("the service stopped: %v", err)
		default:
		}
		return exists()
	})
	cancel()
	if err := <-done; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
}
