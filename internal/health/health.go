// Package health answers process managers about a worker process: HTTP
// liveness and readiness probes (Kubernetes, load balancers, GitLab's
// /liveness and /readiness) and systemd's notify protocol (Type=notify,
// READY=1, STOPPING=1 and watchdog pings).
//
// Liveness asks "is the process stuck?": its heartbeat loop goes round,
// whether Redis answers or not, so an outage of Redis or PostgreSQL never
// gets a healthy process restarted. Readiness asks "should it get work?":
// it runs, holds its liveness in Redis, is neither quiet nor stopping, and
// Redis and (when configured) PostgreSQL answer.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/worker"
)

// Runtime is what the probes read of a worker runtime.
type Runtime interface {
	Health() worker.Health
	HeartbeatInterval() time.Duration
}

// Probes checks one worker process.
type Probes struct {
	Runtime Runtime
	Redis   redis.UniversalClient
	// DB is nil when the process has no database.
	DB *pgxpool.Pool
	// Timeout bounds each dependency check (default 2s).
	Timeout time.Duration
}

// stuckAfter: heartbeat rounds a live process may miss; a round can take a
// Redis timeout or two when Redis is gone.
const stuckAfter = 4

// Alive returns nil unless the process is stuck.
func (p *Probes) Alive() error {
	h := p.Runtime.Health()
	if !h.Running {
		return errors.New("the worker is not running")
	}
	if since, limit := time.Since(h.LoopAt), stuckAfter*p.Runtime.HeartbeatInterval(); since > limit {
		return fmt.Errorf("the heartbeat loop has not gone round for %s (limit %s)", since.Round(time.Second), limit)
	}
	return nil
}

// Ready returns nil when the process should be given work.
func (p *Probes) Ready(ctx context.Context) error {
	if err := p.Alive(); err != nil {
		return err
	}
	h := p.Runtime.Health()
	switch {
	case h.Stopping:
		return errors.New("stopping")
	case h.Quiet:
		return errors.New("quiet: fetching no jobs")
	case !h.Live:
		return errors.New("its liveness in Redis lapsed: fetching no jobs until Redis answers")
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := p.Redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if p.DB != nil {
		if err := p.DB.Ping(ctx); err != nil {
			return fmt.Errorf("postgresql: %w", err)
		}
	}
	return nil
}

// Handler serves GET /liveness and /readiness (also under /-/, GitLab's
// paths): 200 {"status":"ok"}, or 503 with the reason.
func (p *Probes) Handler() http.Handler {
	mux := http.NewServeMux()
	live := func(w http.ResponseWriter, _ *http.Request) { reply(w, p.Alive()) }
	ready := func(w http.ResponseWriter, r *http.Request) { reply(w, p.Ready(r.Context())) }
	for _, prefix := range []string{"", "/-"} {
		mux.HandleFunc("GET "+prefix+"/liveness", live)
		mux.HandleFunc("GET "+prefix+"/readiness", ready)
	}
	return mux
}

func reply(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body := map[string]string{"status": "ok"}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		body = map[string]string{"status": "failed", "reason": err.Error()}
	}
	_ = json.NewEncoder(w).Encode(body)
}

// Serve serves h on ln until ctx is done, then closes it.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *zap.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	log.Info("health probes listening", zap.String("addr", ln.Addr().String()))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-done
	return nil
}
