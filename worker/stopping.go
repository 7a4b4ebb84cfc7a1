package worker

import "context"

type stoppingKey struct{}

// Stopping returns a channel that is closed once the process running the
// job has been asked to stop (TERM, INT, Stop, or the Web UI's Stop). A job
// made of steps, such as a batch of sub-batches, can end at the next step
// boundary and leave the rest for another run, well before its context is
// cancelled at the end of the shutdown timeout. Outside a worker (a nil or
// foreign context) the channel is nil: it never closes.
func Stopping(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(stoppingKey{}).(chan struct{})
	return ch
}

// IsStopping reports whether [Stopping] is closed.
func IsStopping(ctx context.Context) bool { return closed(Stopping(ctx)) }
