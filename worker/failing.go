package worker

import (
	"time"

	"go.uber.org/zap"
)

// The background loops whose failures are logged by loopFailed.
const (
	loopHeartbeat = "heartbeat"
	loopMetrics   = "job metrics flush"
	loopPoll      = "scheduled poll"
	loopRecovery  = "orphan recovery"
	loopFetch     = "fetch"
	loopInflight  = "in-flight check"
	loopAck       = "ack"
)

// loopFailed logs a background loop's failure when the loop starts
// failing, then once a minute while it goes on failing (with how long and
// how often), not at every retry: with Redis down the heartbeat alone
// retries every second.
func (r *Runtime) loopFailed(loop, msg string, err error) {
	since, n, ok := r.failing.On(loop, time.Now())
	if !ok {
		return
	}
	fields := []zap.Field{zap.Error(err)}
	if n > 1 {
		fields = append(fields, zap.Duration("failing_for", time.Since(since).Round(time.Second)), zap.Int("failures", n))
	}
	r.log.Warn(msg, fields...)
}

// loopWorks logs that a loop that was failing works again.
func (r *Runtime) loopWorks(loop string) {
	if since, n, ok := r.failing.Off(loop); ok {
		r.log.Info(loop+" works again", zap.Duration("failed_for", time.Since(since).Round(time.Second)), zap.Int("failures", n))
	}
}
