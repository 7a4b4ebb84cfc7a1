package worker

import "time"

// Health is a runtime's state as a process manager's probes see it
// (`ferry worker --health-listen`, systemd's watchdog).
type Health struct {
	// Running: Run has started and not returned.
	Running bool
	// LoopAt is when the heartbeat loop last went round, whether Redis
	// answered or not: a loop that stops going round is a stuck process.
	LoopAt time.Time
	// Live: its liveness in Redis is current, so it fetches and runs jobs
	// (see [ErrLivenessLost]).
	Live bool
	// Quiet: it fetches no more jobs (TSTP, or Quiet from the Web UI).
	Quiet bool
	// Stopping: a stop was requested.
	Stopping bool
}

// Health reports the runtime's state; safe to call from any goroutine.
func (r *Runtime) Health() Health {
	h := Health{Running: r.running.Load(), Quiet: closed(r.quietCh), Stopping: closed(r.stopCh)}
	if n := r.loopAt.Load(); n != 0 {
		h.LoopAt = time.Unix(0, n)
	}
	if l := r.liveRef.Load(); l != nil {
		l.mu.Lock()
		h.Live = l.isOpen()
		l.mu.Unlock()
	}
	return h
}

// HeartbeatInterval is how often the heartbeat loop goes round.
func (r *Runtime) HeartbeatInterval() time.Duration { return r.cfg.HeartbeatInterval }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
