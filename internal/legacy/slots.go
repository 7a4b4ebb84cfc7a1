package legacy

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Running slots: a job holds one of its class's slots while it runs and
// gives it back when it ends, so the next job of the class starts at once
// (GitLab's lease instead lapses after 2 minutes whatever the job took).
// Slots live in Redis (sidekiq.BMSlot), counted per class and cluster-wide.
// Within a process, a class's jobs first queue on a local gate of the same
// size, so only that many poll Redis while the others wait on a channel.

// localGates are per-class semaphores within the process.
type localGates struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (g *localGates) get(class string, size int) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]chan struct{}{}
	}
	c := g.m[class]
	if c == nil {
		c = make(chan struct{}, size)
		g.m[class] = c
	}
	return c
}

func (w *Worker) limits() sidekiq.BMSlotLimits {
	return sidekiq.BMSlotLimits{PerClass: w.cfg.Concurrency, Cluster: w.cfg.MaxRunning, TTL: w.cfg.SlotTTL}
}

// acquire waits up to LeaseWait for a running slot of class. It returns
// nil and the reason when none came free in time.
func (w *Worker) acquire(ctx context.Context, class string) (*sidekiq.BMSlot, string, error) {
	waitCtx, cancel := context.WithTimeout(ctx, w.cfg.LeaseWait)
	defer cancel()
	gate := w.gates.get(class, w.cfg.Concurrency)
	select {
	case gate <- struct{}{}:
	case <-waitCtx.Done():
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		return nil, w.busyReason(class, sidekiq.BMSlotClassFull), nil
	}
	slot := &sidekiq.BMSlot{Class: class, Token: sidekiq.NewJID()}
	pause := 2 * time.Millisecond
	for {
		res, err := slot.Acquire(ctx, w.cfg.Redis, w.limits())
		if err != nil {
			<-gate
			return nil, "", fmt.Errorf("bm: %w", err)
		}
		if res == sidekiq.BMSlotTaken {
			return slot, "", nil
		}
		// Another process holds the slot: poll, backing off to 50 ms, so
		// its release is seen within that.
		select {
		case <-time.After(pause):
			pause = min(2*pause, 50*time.Millisecond)
		case <-waitCtx.Done():
			<-gate
			if err := ctx.Err(); err != nil {
				return nil, "", err
			}
			return nil, w.busyReason(class, res), nil
		}
	}
}

func (w *Worker) busyReason(class string, res sidekiq.BMSlotResult) string {
	if res == sidekiq.BMSlotClusterFull {
		return fmt.Sprintf("the cluster already runs %d legacy migration jobs (bm.max_running) for %s", w.cfg.MaxRunning, w.cfg.LeaseWait)
	}
	return fmt.Sprintf("%s already runs %d job(s) at once (bm.concurrency) for %s", class, w.cfg.Concurrency, w.cfg.LeaseWait)
}

// release gives the slot back, even when ctx was cancelled: a slot left
// behind would hold the class for SlotTTL.
func (w *Worker) release(ctx context.Context, class string, slot *sidekiq.BMSlot) {
	<-w.gates.get(class, w.cfg.Concurrency)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := slot.Release(rctx, w.cfg.Redis); err != nil {
		w.log.Warn("could not release a running slot; it frees itself after its TTL",
			zap.String("migration", class), zap.Duration("ttl", w.cfg.SlotTTL), zap.Error(err))
	}
}

// runHolding runs the job while refreshing its slot every third of its TTL.
func (w *Worker) runHolding(ctx context.Context, slot *sidekiq.BMSlot, prep *Prepared, log *zap.Logger) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.cfg.SlotTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				res, err := slot.Refresh(ctx, w.cfg.Redis, w.limits())
				if err != nil || res != sidekiq.BMSlotTaken {
					// Another job of the class may be running beside this
					// one now; the job itself is fine, so only say so.
					log.Warn("running slot lapsed while the job ran", zap.Int("refresh", int(res)), zap.Error(err))
				}
			}
		}
	}()
	defer func() { close(done); wg.Wait() }()
	return prep.Run(ctx)
}

// healthCache reuses a health verdict for healthCacheTTL.
type healthCache struct {
	check HealthCheck
	now   func() time.Time

	mu      sync.Mutex
	at      time.Time
	healthy bool
	why     string
}

func (h *healthCache) get(ctx context.Context) (bool, string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if !h.at.IsZero() && now.Sub(h.at) < healthCacheTTL && now.Sub(h.at) >= 0 {
		return h.healthy, h.why, nil
	}
	ok, why, err := h.check(ctx)
	if err != nil {
		return false, "", err
	}
	h.at, h.healthy, h.why = now, ok, why
	return ok, why, nil
}
