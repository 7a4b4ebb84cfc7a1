package batched

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/sleep"
)

// An engine's session says "this process is alive" to the other engines.
// Job rows name the session that claimed them; a batch counts as
// abandoned only when its session is gone: no heartbeat for
// livenessGrace. Not a session advisory lock: it vanishes with a
// connection (a PostgreSQL restart, a terminated backend, a failover)
// while its process lives on, and behind a transaction pooler (PgBouncer)
// it would stay on a server connection after its process died.
//
// Whoever rescues must itself have heartbeated for livenessGrace without a
// gap (Engine.settled): after a restart every heartbeat is old and no lock
// is held, and the first engine back must give the others the same grace
// to come back before it calls them dead.
const (
	heartbeatEvery = time.Second
	// livenessGrace: a session whose heartbeat is older is gone. Several
	// heartbeats, so a slow one is not a death; short enough that a
	// killed worker's batch is taken over within 10 s.
	livenessGrace = 5 * time.Second
	// sessionRowsKept: rows of sessions gone this long are deleted.
	sessionRowsKept = 24 * time.Hour
)

// Start takes the engine's session: a number and a row heartbeated every
// second. Job rows carry the number, so when the process dies (even
// SIGKILL) other engines re-run its batches within seconds, instead of
// after GitLab's hour. If the heartbeat's connection is lost (a restart,
// a failover), the engine takes a new one under the same number, and its
// batches stay its own.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.session != 0 {
		return nil
	}
	var n int64
	if err := e.pool.QueryRow(ctx, `SELECT nextval('ferry_bbm_session_seq') % 2147483647`).Scan(&n); err != nil {
		return fmt.Errorf("bbm: start (run `ferry setup`?): %w", err)
	}
	conn, err := e.connectSession(ctx, n)
	if err != nil {
		return fmt.Errorf("bbm: start: %w", err)
	}
	// Sessions of processes gone for a day are of no use to anyone.
	_, _ = e.pool.Exec(ctx, `DELETE FROM ferry_bbm_sessions WHERE heartbeat_at < now() - $1::interval`, sessionRowsKept.String())
	hctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	e.session, e.settledFrom, e.beatAt = n, time.Now(), time.Now()
	e.hbStop, e.hbDone = stop, make(chan struct{})
	go e.heartbeat(hctx, conn, e.hbDone)
	return nil
}

// startWaiting is Start, waiting out a database that is away (a restart, a
// failover, a terminated connection) instead of failing: a worker whose
// first session fails must not run without migrations until restarted.
func (e *Engine) startWaiting(ctx context.Context) error {
	for wait := reconnectMin; ; wait = min(2*wait, reconnectMax) {
		err := e.Start(ctx)
		if !isConnLoss(err) || ctx.Err() != nil {
			return err
		}
		if wait == reconnectMin {
			e.log.Warn("database unreachable; batched background migrations wait for it", zap.Error(err))
		}
		if !sleep.For(ctx, wait) {
			return ctx.Err()
		}
	}
}

// connectSession takes a connection for session n's heartbeats and beats
// once. The connection is the engine's own (not shared with batches), so
// a pool busy with batches never delays a heartbeat.
func (e *Engine) connectSession(ctx context.Context, n int64) (*pgxpool.Conn, error) {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.beat(ctx, conn, n); err != nil {
		dropConn(conn)
		return nil, err
	}
	return conn, nil
}

func (e *Engine) beat(ctx context.Context, conn *pgxpool.Conn, n int64) error {
	_, err := conn.Exec(ctx, `INSERT INTO ferry_bbm_sessions (id, identity) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`, n, e.identity)
	if err != nil {
		return fmt.Errorf("session heartbeat: %w", err)
	}
	return nil
}

// heartbeat keeps the session alive until Close, taking a new connection
// whenever the one it has fails. It closes done on return (a parameter:
// Close clears the field before it waits on the channel).
func (e *Engine) heartbeat(ctx context.Context, conn *pgxpool.Conn, done chan struct{}) {
	defer close(done)
	defer func() {
		if conn != nil {
			dctx, cancel := context.WithTimeout(context.Background(), livenessGrace/2)
			defer cancel()
			_, _ = conn.Exec(dctx, `DELETE FROM ferry_bbm_sessions WHERE id = $1`, e.Session())
			dropConn(conn)
		}
	}()
	n := e.Session()
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if e.crashed.Load() {
			// A simulated death: no more heartbeats, and the row stays, as
			// after SIGKILL.
			if conn != nil {
				dropConn(conn)
				conn = nil
			}
			<-ctx.Done()
			return
		}
		conn = e.beatOnce(ctx, conn, n)
	}
}

// beatOnce heartbeats on conn, or on a new connection when conn is nil,
// and returns the connection to use next time (nil after a failure).
func (e *Engine) beatOnce(ctx context.Context, conn *pgxpool.Conn, n int64) *pgxpool.Conn {
	bctx, cancel := context.WithTimeout(ctx, livenessGrace/2)
	defer cancel()
	var err error
	if conn == nil {
		conn, err = e.connectSession(bctx, n)
	} else if err = e.beat(bctx, conn, n); err != nil {
		dropConn(conn)
		conn = nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil:
		if !e.settledFrom.IsZero() {
			e.log.Warn("lost the database session; batches pause until it is back, and other workers wait before taking them over",
				zap.Int64("session", n), zap.Error(err))
		}
		e.settledFrom = time.Time{}
	case err == nil && e.settledFrom.IsZero():
		e.log.Info("database session back", zap.Int64("session", n))
		e.settledFrom = time.Now()
	}
	if err == nil {
		e.beatAt = time.Now()
	}
	return conn
}

func dropConn(conn *pgxpool.Conn) {
	_ = conn.Conn().Close(context.Background())
	conn.Release()
}

// Close ends the session: its row is deleted, so batches still recorded
// as running under it are taken over by other engines at once. A closed
// engine does not start again ([ErrClosed]).
func (e *Engine) Close() {
	e.mu.Lock()
	stop, done := e.hbStop, e.hbDone
	e.hbStop, e.hbDone, e.closed = nil, nil, true
	e.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
	e.mu.Lock()
	e.session, e.settledFrom = 0, time.Time{}
	e.mu.Unlock()
}

// Session is the engine's session number (0 before Start).
func (e *Engine) Session() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.session
}

// sessionFresh reports whether this engine heartbeated recently enough to
// claim: a claim under a session others may soon judge gone would only be
// rescued from under it (and use an attempt each time).
func (e *Engine) sessionFresh() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return time.Since(e.beatAt) < livenessGrace/2
}

// settled reports whether this engine has heartbeated without a gap for
// livenessGrace, i.e. whether it may judge other sessions gone.
func (e *Engine) settled() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.settledFrom.IsZero() && time.Since(e.settledFrom) >= livenessGrace
}

// sessionAlive is an SQL condition: the engine session in column col
// heartbeated within livenessGrace.
func sessionAlive(col string) string {
	// A subquery, not an anti-join: an UPDATE re-checks it against the
	// row's new value after a lock wait.
	return `EXISTS (SELECT 1 FROM ferry_bbm_sessions s WHERE s.id = ` + col + `
		AND s.heartbeat_at > now() - interval '` + strconv.Itoa(int(livenessGrace/time.Millisecond)) + ` milliseconds' OFFSET 0)`
}

// claimStarted records token as a batch running in this engine, before
// the claim commits: the engine's own rescue (ownOrphan) must never take
// a batch one of its goroutines is about to run.
func (e *Engine) claimStarted(token int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running[token] = struct{}{}
}

// claimEnded forgets token: its goroutine has recorded the outcome or
// given up. A row still running under it is then an orphan of this engine.
func (e *Engine) claimEnded(token int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.running, token)
}

func (e *Engine) runningTokens() []int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]int64, 0, len(e.running))
	for t := range e.running {
		out = append(out, t)
	}
	return out
}
