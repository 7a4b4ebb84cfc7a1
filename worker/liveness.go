package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ErrLivenessLost is the cause ([context.Cause]) of a job's context when
// its process could not refresh its liveness in Redis in time: another
// process may soon take the job over, so the job must stop. It is not
// acknowledged and runs again later, on this process once Redis answers
// again or on another one.
var ErrLivenessLost = errors.New("worker: liveness in Redis lost; the job will run again")

// Timings of liveness, with the defaults (heartbeat H = 5 s, alive TTL
// T = 20 s, recovery grace G = T/2 = 10 s):
//
//   - every heartbeat and every fetch sets the alive key for T; a failed
//     heartbeat is retried within a second, not after H;
//   - a process counts on its liveness for T/2 after the start of its last
//     successful refresh (the key lives T from a moment after that start).
//     Then it stops fetching and cancels its running jobs with
//     [ErrLivenessLost]. T/2 >= 2H, so one lost or slow heartbeat never
//     does this;
//   - its key expires at the earliest T after that start, and recovery by
//     others waits until the key has been missing for G without a break.
//     So a cancelled job has at least T/2 + G = 20 s to return before
//     anyone else can run it, and a process that merely lost its key (an
//     empty Redis restart) re-creates it within a heartbeat, long before G.
//
// liveness is the runtime's view of that: it cancels the current epoch's
// context when refreshes stop, and starts a new epoch once one succeeds.
type liveness struct {
	after time.Duration    // stop and cancel this long after the last refresh started
	last  func() time.Time // start of the last successful refresh
	log   *zap.Logger
	wake  chan struct{}   // a refresh succeeded
	base  context.Context // parent of every epoch (the runtime's work context)

	mu     sync.Mutex
	epoch  context.Context // jobs started now get this
	cancel context.CancelCauseFunc
	gen    int           // bumped at each new epoch
	live   chan struct{} // closed while live
}

func newLiveness(base context.Context, after time.Duration, last func() time.Time, log *zap.Logger) *liveness {
	l := &liveness{after: after, last: last, log: log, wake: make(chan struct{}, 1), base: base}
	l.epoch, l.cancel = context.WithCancelCause(base)
	l.live = make(chan struct{})
	close(l.live)
	return l
}

// current returns the context for jobs started now and its epoch number.
func (l *liveness) current() (context.Context, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch, l.gen
}

// wait blocks until the process is live (or ctx ends) and returns the
// epoch number. Liveness may be lost right after; whatever the caller
// then does is bound to that epoch's context.
func (l *liveness) wait(ctx context.Context) (int, bool) {
	l.mu.Lock()
	live := l.live
	l.mu.Unlock()
	select {
	case <-live:
		_, gen := l.current()
		return gen, true
	case <-ctx.Done():
		return 0, false
	}
}

// refreshed tells the watchdog that a refresh succeeded.
func (l *liveness) refreshed() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run is the watchdog: it does not depend on any Redis call returning, so
// a call stuck on a dead connection cannot delay the cancellation.
func (l *liveness) run(ctx context.Context) {
	t := time.NewTimer(l.after)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.wake:
		}
		left := l.after - time.Since(l.last())
		if left > 0 {
			l.regain()
			t.Reset(left)
			continue
		}
		l.lose(time.Since(l.last()))
		t.Stop() // nothing to do until a refresh succeeds
	}
}

func (l *liveness) lose(since time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.isOpen() {
		return
	}
	l.live = make(chan struct{})
	l.cancel(ErrLivenessLost)
	l.log.Error("lost liveness in Redis: stopped fetching and cancelled running jobs; they stay in this process's private list and run again, "+
		"here once Redis answers or on another process",
		zap.Duration("since_last_refresh", since.Round(time.Millisecond)), zap.Duration("limit", l.after))
}

func (l *liveness) regain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isOpen() {
		return
	}
	l.epoch, l.cancel = context.WithCancelCause(l.base)
	l.gen++
	close(l.live)
	l.log.Warn("liveness in Redis refreshed again: fetching resumes; jobs cancelled meanwhile are pushed back")
}

// isOpen reports (with mu held) whether the process is live.
func (l *liveness) isOpen() bool {
	select {
	case <-l.live:
		return true
	default:
		return false
	}
}
