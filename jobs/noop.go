package jobs

import (
	"context"
	"encoding/json"

	"github.com/ferrymigrate/ferry/worker"
)

// NoopClass is the Sidekiq class name of the job that does nothing.
const NoopClass = "Ferry::Noop"

// NoopArgs are the args of Ferry::Noop: anything at all, ignored.
type NoopArgs []json.RawMessage

// Kind is the Sidekiq class name.
func (NoopArgs) Kind() string { return NoopClass }

// AddNoop registers Ferry::Noop, a job that does nothing, for smoke tests
// of a deployment and for benchmarks.
func AddNoop(r *worker.Registry) {
	worker.AddWorker(r, worker.WorkFunc[NoopArgs](func(context.Context, *worker.Job[NoopArgs]) error { return nil }))
}
