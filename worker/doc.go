// Package worker runs Sidekiq jobs in Go: a [Runtime] fetches jobs
// reliably from Sidekiq queues in Redis, runs them on a bounded number of
// slots, records retries and dead jobs exactly as Ruby Sidekiq does, and
// shows up on the Sidekiq Web UI's Busy page.
//
// # Defining a job
//
// A job's args are a type implementing [Args]; Kind returns the Sidekiq
// class name under which Ruby (or [queue.Client]) enqueues it. Sidekiq args
// are a positional JSON array: a struct's exported fields are filled in
// declaration order by [DecodeArgs], and [EncodeArgs] does the reverse.
//
//	type ResizeArgs struct {
//		ImageID int64
//		Width   int `sidekiq:",optional"`
//	}
//
//	func (ResizeArgs) Kind() string { return "Images::ResizeJob" }
//
// # Registering workers
//
// Register a [Worker] (or a [WorkFunc]) per kind in a [Registry];
// [AddWorker] panics on a duplicate kind, [AddWorkerSafely] returns the
// error instead.
//
//	reg := worker.NewRegistry()
//	worker.AddWorker(reg, worker.WorkFunc[ResizeArgs](func(ctx context.Context, j *worker.Job[ResizeArgs]) error {
//		return resize(ctx, j.Args.ImageID, j.Args.Width)
//	}))
//
// # Running
//
// [New] validates a [Config]; [Runtime.Run] works jobs until its context is
// cancelled, [Runtime.Stop] is called, or the Web UI's Stop button sends
// TERM. [Runtime.Quiet] (or TSTP from the Web UI) stops fetching while
// running jobs finish.
//
//	rt, err := worker.New(worker.Config{Redis: rdb, Registry: reg,
//		Queues: []queue.WeightedQueue{{Name: "images"}}, Concurrency: 10})
//	if err != nil {
//		return err
//	}
//	return rt.Run(ctx) // ctx from signal.NotifyContext in main
//
// On stop the runtime stops fetching, waits for running jobs, then pushes
// them back to their queues unchanged and cancels their context, returning
// within Config.Timeout. Delivery is at least once: a job may run again after a
// crash or a hard stop, so jobs should be idempotent.
//
// # Failures
//
// A job that returns an error (or panics) takes Sidekiq's retry path: a
// retry entry with error_class and error_message, then the dead set once
// retries are exhausted. Jobs of an unknown class fail with NameError and
// args that do not decode with ArgumentError, as in Ruby. Return an error
// wrapping [ErrDiscard] to drop a job without a retry, or [ErrKill] to send
// it to the dead set at once. An error can choose its error_class with a
// SidekiqErrorClass() string method.
//
// # Middleware
//
// [Middleware] wraps every job; the first in Config.Middleware is the
// outermost. Changes a middleware makes to the payload are not recorded in
// retry entries, which are rebuilt from the original bytes as in Sidekiq.
package worker
