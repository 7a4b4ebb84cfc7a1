package process_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
	"github.com/ferrymigrate/ferry/process"
	"github.com/ferrymigrate/ferry/worker"
)

// A process built from options runs an application's class and ferry's
// built-ins, runs a batched migration through its engine, answers its
// probes, and stops cleanly (no goroutine left behind).
func TestProcessRunsJobsMigrationsAndProbes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := testenv.Context(t)
	rdb := testenv.Redis(t)
	pc, err := config.PoolConfig(testenv.DatabaseURL(t), 8)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE events (id int PRIMARY KEY, v int NOT NULL, v_big bigint);
		INSERT INTO events SELECT g, g FROM generate_series(1, 5000) g; ANALYZE events`); err != nil {
		t.Fatal(err)
	}
	reg := process.NewRegistries()
	var invoices atomic.Int64
	worker.AddWorker(reg.Workers, worker.WorkFunc[InvoiceArgs](func(context.Context, *worker.Job[InvoiceArgs]) error {
		invoices.Add(1)
		return nil
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := process.New(ctx, process.Options{
		Redis: rdb, DB: pool, Registries: reg, Logger: zaptest.NewLogger(t), HealthListener: ln,
		Worker: worker.Config{Queues: []sidekiq.WeightedQueue{{Name: "default", Weight: 1}, {Name: batched.Queue, Weight: 1}}, Concurrency: 4},
		BBM:    batched.Config{TargetBatchDuration: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()

	c := sidekiq.NewClient(rdb)
	for i := range 20 {
		if _, err := c.Push(ctx, "Billing::InvoiceJob", []byte(fmt.Sprintf(`[%d,"2026-11"]`, i)), sidekiq.PushOptions{Queue: "default"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Push(ctx, "Ferry::Noop", []byte(`[]`), sidekiq.PushOptions{Queue: "default"}); err != nil {
			t.Fatal(err)
		}
	}
	e := batched.NewEngine(pool, batched.Config{Registry: reg.BBM})
	defer e.Close()
	res, err := e.Queue(ctx, batched.QueueOptions{Class: batched.CopyColumnClass, Table: "events", Column: "id", Args: []byte(`[["v"],["v_big"]]`)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "jobs run and the migration finished", func() bool {
		m, err := e.Get(ctx, res.Migration.ID)
		return invoices.Load() == 20 && rdb.LLen(ctx, "queue:default").Val() == 0 && err == nil && m.Status == batched.Finished
	})
	for _, path := range []string{"/liveness", "/readiness"} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	var bad int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE v_big IS DISTINCT FROM v`).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("%d rows not copied (%v)", bad, err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Options that cannot work are refused before anything runs.
func TestProcessRefusesBadOptions(t *testing.T) {
	if _, err := process.New(context.Background(), process.Options{}); err == nil {
		t.Fatal("no Redis: want an error")
	}
	_, err := process.New(context.Background(), process.Options{Redis: testenv.Redis(t), Worker: worker.Config{Concurrency: 5000}})
	if err == nil || !errorsIs(err, process.ErrInvalidOptions) {
		t.Fatalf("concurrency 5000: %v, want ErrInvalidOptions", err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
