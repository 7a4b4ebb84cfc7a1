package batched

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// DatabaseHealth checks the indicators that concern the whole database,
// not one table (a standby's replication and replay lag, WAL waiting for
// the archiver, a long-open transaction), with h's limits: the same
// checks, and the same reasons, that hold batched migrations. Legacy
// migrations use it. An indicator that cannot run (missing privileges) is
// skipped, as for batched migrations.
func DatabaseHealth(db Queryer, h HealthConfig) func(context.Context) (healthy bool, reason string, err error) {
	h = h.withDefaults()
	inds := []indicator{
		replicationLagIndicator{cat: pgCatalog, maxBytes: h.MaxReplicationLagBytes, maxReplay: h.MaxReplayLag},
		walArchiveIndicator{cat: pgCatalog, max: h.MaxPendingWAL},
		longTransactionIndicator{cat: pgCatalog, age: h.LongTransaction},
	}
	return func(ctx context.Context) (bool, string, error) {
		if h.Disabled {
			return true, "", nil
		}
		for _, ind := range inds {
			s, err := ind.check(ctx, db, healthInput{app: ownAppNamePrefix})
			if err != nil {
				if ctx.Err() != nil {
					return false, "", err
				}
				continue
			}
			if s != nil && s.Stop {
				return false, s.Indicator + ": " + s.Reason, nil
			}
		}
		return true, "", nil
	}
}

// SharedPace paces work other than batched migrations (legacy background
// migrations) by the same contention signal and on the same clock,
// ferry_bbm_pace: while other sessions use the database, each piece of
// work is followed by a pause, so that all of ferry's paced work in every
// process together takes the duty share of the time (open loop: the
// canaries of the closed loop interleave with sub-batches, which legacy
// jobs do not have). Safe for concurrent use.
type SharedPace struct {
	db  Queryer
	ind contentionIndicator

	mu sync.Mutex
	p  pacer
}

// maxSharedWait caps the wait for the clock before one piece of work, so
// a queue of paced batches cannot hold a legacy job's slot for long.
const maxSharedWait = 5 * time.Second

// NewSharedPace paces on db's clock with h's duty cycle
// (MaxDutyUnderLoad, MinDutyUnderLoad); nil when pacing is off.
func NewSharedPace(db Queryer, h HealthConfig) *SharedPace {
	h = h.withDefaults()
	p := newPacer(h)
	if h.Disabled || !p.enabled() {
		return nil
	}
	p.ctl = latencyControl{}
	return &SharedPace{db: db, ind: contentionIndicator{cat: pgCatalog}, p: p}
}

// Wait returns how long to wait before starting work: while the database
// serves others, until the shared clock gives this process its turn.
func (s *SharedPace) Wait(ctx context.Context) (time.Duration, error) {
	s.mu.Lock()
	paced := s.p.paced()
	s.mu.Unlock()
	if !paced {
		return 0, nil
	}
	wait, err := reservePace(ctx, s.db, 0, 0)
	return min(wait, maxSharedWait), err
}

// Done reports work that took work and returns the pause to keep before
// the next piece (0 while the database serves no one else) and, when
// paced, why, in the words `bbm show` uses.
func (s *SharedPace) Done(ctx context.Context, work time.Duration) (time.Duration, string, error) {
	pr, err := s.ind.sample(ctx, s.db)
	if err != nil {
		return 0, "", fmt.Errorf("contention: %w", err)
	}
	s.mu.Lock()
	s.p.observe(pr.busy, pr.recent, time.Now())
	pause, burst := s.p.pause(work)
	var reason string
	if sig := s.p.signal(); sig != nil {
		reason = strings.TrimSpace(sig.Indicator + ": " + sig.Reason)
	}
	s.mu.Unlock()
	if pause <= 0 {
		return 0, "", nil
	}
	wait, err := reservePace(ctx, s.db, burst, burst+pause)
	if err != nil {
		return 0, "", err
	}
	return min(wait, maxSharedWait), reason, nil
}
