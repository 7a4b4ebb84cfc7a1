package batched

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Waits between tries while the database is unreachable.
const (
	reconnectMin = 100 * time.Millisecond
	reconnectMax = 2 * time.Second
)

// IsConnLoss reports whether err means the database could not be reached
// or the connection was lost (a restart, a failover), not that a
// statement failed: waiting and trying again is the answer.
func IsConnLoss(err error) bool { return isConnLoss(err) }

// isConnLoss reports whether err means the connection, not the statement,
// failed: the server restarted, failed over, terminated the backend or
// cannot be reached. Such an error is nobody's fault: it uses no attempt
// and never fails a migration; the work waits for the database and goes on.
func isConnLoss(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 08: connection exception; 57P01-03: admin or crash shutdown,
		// cannot connect now (starting up, recovering).
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, context.DeadlineExceeded)
}

// retryConnLoss runs fn until it succeeds or fails for another reason than
// a lost connection. It keeps trying while ctx lives (the database comes
// back: a restart, a failover) and for shutdownGrace once ctx is done. fn
// must be safe to run again after a COMMIT whose reply was lost: the
// engine's writes check the claim token and status, so a repeat finds the
// job no longer running and stops with errLostOwnership.
func (e *Engine) retryConnLoss(ctx context.Context, what string, fn func(context.Context) error) error {
	var giveUp time.Time
	wait := reconnectMin
	for logged := false; ; {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		err := fn(rctx)
		cancel()
		if err == nil || !isConnLoss(err) || e.crashed.Load() {
			return err
		}
		if ctx.Err() != nil {
			if giveUp.IsZero() {
				giveUp = time.Now().Add(shutdownGrace)
			} else if time.Now().After(giveUp) {
				return err
			}
		}
		if !logged {
			e.log.Warn("database unreachable; "+what+" waits for it", zap.Error(err))
			logged = true
		}
		// Bounded: at most reconnectMax, and tries stop shutdownGrace
		// after ctx is done.
		time.Sleep(wait)
		wait = min(2*wait, reconnectMax)
	}
}
