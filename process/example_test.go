package process_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/process"
	"github.com/ferrymigrate/ferry/worker"
)

// InvoiceArgs are the args of a Sidekiq job class of your application.
type InvoiceArgs struct {
	AccountID int64
	Month     string
}

// Kind is the Sidekiq class name: the stable key.
func (InvoiceArgs) Kind() string { return "Billing::InvoiceJob" }

// A worker process of your own: ferry's built-in classes plus yours, on
// your queues, until TERM or Ctrl-C.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	reg := process.NewRegistries()
	worker.AddWorker(reg.Workers, worker.WorkFunc[InvoiceArgs](func(ctx context.Context, j *worker.Job[InvoiceArgs]) error {
		fmt.Println("invoice", j.Args.AccountID, j.Args.Month)
		return nil
	}))
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	p, err := process.New(ctx, process.Options{
		Redis: rdb, Registries: reg,
		Worker: worker.Config{Queues: []sidekiq.WeightedQueue{{Name: "default", Weight: 1}}, Concurrency: 10},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := p.Run(ctx); err != nil {
		fmt.Println(err)
	}
}
