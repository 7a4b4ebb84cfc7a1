package bbm

import (
	"context"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"
)

// Contention pacing.
//
// The other indicators fire on trouble (a lock wait, lag, a vacuum), but a
// migration running flat out also hurts a busy database without any of
// them: it keeps a core and the WAL busy, and the sessions serving the
// application queue behind it. So between sub-batches the batch samples how
// many other sessions of the database are doing work (pg_stat_activity:
// client backends in state active, not ferry's own), smooths the samples,
// and while that load is there it paces itself to a duty cycle: after a
// sub-batch that took w it sleeps w*(1-d)/d, so its statements take a share
// d of the time, and it keeps each statement short (loadSubBatchBudget) so
// the rows it locks and the CPU bursts it takes are short too. The more
// sessions are busy, the lower d, down to MinDutyUnderLoad; when they go
// quiet, the average falls below the threshold within a few sub-batches and
// the batch runs at full speed again.
//
// The sample is one small query on the batch's own connection per
// sub-batch (a sub-batch is tens of milliseconds or more), so an idle
// database pays one round trip per sub-batch and is never paced.
const (
	// contentionThreshold: the average number of other busy sessions
	// below which the database counts as idle (one session running a
	// query now and then stays below it).
	contentionThreshold = 0.5
	// contentionAlpha weighs each new sample in the moving average: about
	// five sub-batches to notice a load, and as many to notice it is gone.
	contentionAlpha = 0.3
	// loadSubBatchBudget caps a sub-batch statement while paced: the rows
	// it locks stay locked, and the CPU it takes stays taken, this long.
	loadSubBatchBudget = 20 * time.Millisecond
	// maxPacePause caps one pause, so a slow statement cannot stall the
	// batch for long (the next sample decides again).
	maxPacePause = 2 * time.Second

	defaultMaxDutyUnderLoad = 0.5
	defaultMinDutyUnderLoad = 0.1
)

// contentionIndicator counts the other sessions of the database that are
// doing work right now: client backends in state active, excluding this
// one, ferry's sub-batch sessions (application_name) and ferry's own
// bookkeeping statements. Other users' sessions are only visible with
// pg_read_all_stats (or as their owner); without it they are not counted.
type contentionIndicator struct{ cat catalog }

func (contentionIndicator) name() string { return "contention" }

func (c contentionIndicator) sql() string {
	return `SELECT count(*)::int FROM ` + c.cat.activity + `
		WHERE datname = current_database() AND backend_type = 'client backend' AND state = 'active'
		  AND pid <> pg_backend_pid() AND coalesce(application_name, '') NOT LIKE '` + appNamePrefix + `%'
		  AND query NOT LIKE '%batched_background_migration%' AND query NOT LIKE '%ferry_bbm_%'`
}

// sample reads the number of other busy sessions.
func (c contentionIndicator) sample(ctx context.Context, db queryer) (int, error) {
	var n int
	err := db.QueryRow(ctx, c.sql()).Scan(&n)
	return n, err
}

// pacer is the duty-cycle decision: samples in, duty and pauses out. It has
// no clock and no database, so tests feed it made-up samples.
type pacer struct {
	maxDuty, minDuty float64
	load             float64 // moving average of other busy sessions
	samples          int
}

func newPacer(h HealthConfig) pacer {
	return pacer{maxDuty: h.MaxDutyUnderLoad, minDuty: h.MinDutyUnderLoad}
}

// enabled reports whether pacing can ever slow a batch.
func (p *pacer) enabled() bool { return p.maxDuty < 1 }

// observe adds one sample: how many other sessions were busy.
func (p *pacer) observe(busy int) {
	x := float64(max(busy, 0))
	if p.samples == 0 {
		p.load = x
	} else {
		p.load += contentionAlpha * (x - p.load)
	}
	p.samples++
}

// duty is the share of time sub-batch statements may take: 1 while the
// database is idle; under load MaxDutyUnderLoad for about one busy session,
// falling in proportion to their number, never below MinDutyUnderLoad.
func (p *pacer) duty() float64 {
	if !p.enabled() || p.load < contentionThreshold {
		return 1
	}
	d := p.maxDuty / max(p.load, 1)
	return math.Max(p.minDuty, math.Min(d, p.maxDuty))
}

// paced reports whether the batch is being slowed now.
func (p *pacer) paced() bool { return p.duty() < 1 }

// pause is how long to wait after a sub-batch that took work, so that
// statements take the duty share of the time.
func (p *pacer) pause(work time.Duration) time.Duration {
	d := p.duty()
	if d >= 1 || work <= 0 {
		return 0
	}
	return min(time.Duration(float64(work)*(1-d)/d), maxPacePause)
}

// budget is the sub-batch statement budget: normal, or short while paced.
func (p *pacer) budget(normal time.Duration) time.Duration {
	if p.paced() {
		return min(normal, loadSubBatchBudget)
	}
	return normal
}

// signal describes the pacing for `bbm show` (nil at full speed).
func (p *pacer) signal() *Signal {
	d := p.duty()
	if d >= 1 {
		return nil
	}
	return &Signal{Indicator: contentionIndicator{}.name(), Duty: d,
		Reason: fmt.Sprintf("%.1f other session(s) busy in the database on average: sub-batches paced to a %.0f%% duty cycle", p.load, d*100)}
}

// pacing is what a batch reports about its pacing (job metrics).
type pacing struct {
	Duty   float64 `json:"duty_cycle"`     // at the end of the batch
	Busy   float64 `json:"others_busy"`    // moving average of other busy sessions
	Paused float64 `json:"paused_s"`       // seconds slept between sub-batches
	MinD   float64 `json:"min_duty_cycle"` // lowest duty during the batch
}

// pacerFor returns the migration's pacer as the last batch left it, so a
// new batch starts paced when the database was busy a moment ago.
func (e *Engine) pacerFor(id int64) pacer {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pacers[id]; ok {
		return p
	}
	return newPacer(e.health)
}

// storePacer keeps a batch's pacer for the next batch and logs when pacing
// starts or stops.
func (e *Engine) storePacer(m *Migration, p pacer) {
	e.mu.Lock()
	prev, had := e.pacers[m.ID]
	e.pacers[m.ID] = p
	e.mu.Unlock()
	was := had && prev.paced()
	switch now := p.paced(); {
	case now && !was:
		e.log.Info("batched background migration paced: other sessions are busy", zap.Int64("migration_id", m.ID),
			zap.Float64("others_busy", p.load), zap.Float64("duty_cycle", p.duty()))
	case !now && was:
		e.log.Info("batched background migration back to full speed: the database is idle", zap.Int64("migration_id", m.ID),
			zap.Float64("others_busy", p.load))
	}
}

// paceSignal is the migration's current pacing as a health signal.
func (e *Engine) paceSignal(id int64) *Signal {
	e.mu.Lock()
	p, ok := e.pacers[id]
	e.mu.Unlock()
	if !ok {
		return nil
	}
	return p.signal()
}
