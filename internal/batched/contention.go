package batched

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Contention pacing.
//
// The other indicators fire on trouble (a lock wait, lag, a vacuum), but a
// migration running flat out also hurts a busy database without any of
// them, through two channels, and each sub-batch measures both (a probe,
// see probeSQL):
//
//   - Row locks. The rows a sub-batch updates stay locked until it
//     commits, so an application UPDATE of one of them waits for the rest
//     of the statement: a few such waits are enough to double the
//     application's p99 latency. Every session that met one of our locks
//     during the statement is still waiting when it ends, so the probe,
//     run in the sub-batch's transaction just before COMMIT, counts
//     exactly the sessions this sub-batch blocked (and DDL queued on the
//     table). When there are any, the statement budget is cut to a
//     quarter, down to minBlockingBudget, and it grows back by a twentieth
//     per sub-batch that blocks no one: the rows locked and the time they
//     stay locked shrink together until others rarely meet them, and wait
//     little when they do.
//   - Shared CPU and WAL. The probe also counts the other sessions of the
//     database that are doing work (pg_stat_activity: client backends in
//     state active, not ferry's own) and smooths the counts. While the
//     database serves others, the batch paces itself to a duty cycle:
//     it keeps each statement short (loadSubBatchBudget), runs them back
//     to back until they took a burst w (pacedBurst, less at low d) and
//     then sleeps w*(1-d)/d, so its statements take a share d of the
//     time. d starts at MaxDutyUnderLoad; once the
//     closed loop (pace_control.go) has measured how much the sub-batches
//     slow a tiny canary transaction, it sets d to the largest share that
//     keeps others' predicted p99 within MaxLatencyImpact, never below
//     the open loop's d. The open loop: the more sessions are busy, the
//     lower d, down to MinDutyUnderLoad. When they have been quiet for
//     contentionHold, the batch runs at full speed again.
//
// The duty cycle belongs to the database, not to a batch: the application
// feels the sum of all paced statements, whichever migration, batch or
// process runs them. So paced sub-batches share one clock, ferry_bbm_pace
// (reservePace): one batch alone sleeps its own pause, batches running at
// once (--parallel, more workers, two migrations) queue behind each other,
// and together they still take a share d of the time.
//
// The probe adds one small query to the sub-batch's own round trip, so an
// idle database pays well under a millisecond per sub-batch and is never
// paced.
const (
	// contentionThreshold: the average number of other busy sessions at
	// which the database counts as serving others. An application doing
	// a thousand short writes a second keeps about 0.3 sessions busy; one
	// query now and then stays below it.
	contentionThreshold = 0.2
	// presenceThreshold: the average number of other sessions that ran a
	// statement in the last 100 ms at which the database counts as
	// serving others, however short their statements: an application's
	// pool doing a thousand 0.3 ms writes a second is rarely caught
	// mid-statement (busy) but always within 100 ms of one.
	presenceThreshold = 0.5
	// contentionTau is the time constant of the moving averages: samples
	// come once per sub-batch, a millisecond or a second apart, so each
	// weighs by the time since the last. A load has to last a few hundred
	// milliseconds to count; the statements that set up a migration a
	// moment ago do not.
	contentionTau = 500 * time.Millisecond
	// contentionHold keeps the pacing on this long after the average
	// fell below the threshold, so a pause in the application's traffic
	// does not release a full-speed burst into its next request.
	contentionHold = 3 * time.Second
	// loadSubBatchBudget caps a sub-batch statement while paced: the rows
	// it locks stay locked, and the CPU it takes stays taken, this long.
	// 3 ms statements (so that a request arriving during one waits less)
	// were tried with the closed loop and copied about half as many rows
	// per second on a quiet box, at the same p99, as 10 ms ones: the
	// canaries found the shorter statements no less harmful per second
	// of work, and their round trips cost. 20 ms ones copied 12% more
	// rows per second of statement time, but not reliably more rows per
	// second, and with one canary per statement the closed loop climbed
	// from its floor half as fast (BENCHMARKS.md section 2, session 12).
	loadSubBatchBudget = 10 * time.Millisecond
	// minBlockingBudget is the shortest statement budget the blocking
	// signal shrinks to: shorter statements would spend more time in
	// round trips than in work.
	minBlockingBudget = 2 * time.Millisecond
	// blockingCut divides the statement budget after a sub-batch blocked
	// others; the budget grows back by 1/blockingRegrow per sub-batch that
	// blocks no one. The time a row stays locked and the number of rows
	// locked both shrink with the budget, so the chance of blocking
	// someone falls with its square: a deep cut and a slow regrowth keep
	// blocks rare.
	blockingCut    = 4
	blockingRegrow = 20
	// pacedBurst is how much statement time a paced batch runs back to
	// back (each sub-batch still its own short statement and commit)
	// before it pauses for the rest of its duty cycle. A request is hurt
	// most by a sub-batch that has just woken: on the 2-core box of
	// BENCHMARKS.md section 2, 10 ms statements every 100 ms (10%)
	// raised a write load's p99 6x, the same 10% as 100 ms bursts of
	// 10 ms statements 1.2-1.3x (20% in 100-200 ms bursts: 1.3-1.4x),
	// and a CPU-bound loop with no table behaved alike, so it is the
	// scheduler, not the rows. Row locks stay as short as the statements.
	pacedBurst = 200 * time.Millisecond
	// pacedCycle bounds a burst and its pause together at low duties: a
	// 2% share bursts 40 ms every 2 s, not 200 ms every 10 s, so the
	// canaries and the contention signal still come often.
	pacedCycle = 2 * time.Second
	// maxPacePause caps one pause, so a slow statement cannot stall the
	// batch for long (the next sample decides again). It must hold one
	// statement's pause at the lowest default duty (10 ms at 0.5%: 1.99 s),
	// or that duty is not reached.
	maxPacePause = pacedCycle

	// The default duty cycle under load without the closed loop, and
	// where the closed loop starts. The damage a sub-batch does to
	// others is not spread evenly: a request that arrives while one runs
	// competes with it for CPU, WAL and pages and can take several times
	// its usual time, one that arrives between them does not notice. So
	// the share of requests that are slowed is about the duty cycle, and
	// it has to stay near 1% for their p99 to stay where it was
	// (BENCHMARKS.md: 2% kept a write load's p99 within 1.5x on two
	// cores, 4% was on the edge, 50% tripled it). Operators who prefer
	// speed raise it.
	defaultMaxDutyUnderLoad = 0.02
	defaultMinDutyUnderLoad = 0.005
)

// contentionIndicator counts the other sessions of the database that are
// doing work: client backends in state active, or that were within
// 100 ms, excluding this one, ferry's sessions (application_name starting
// with "ferry": pools given to NewEngine should be named so) and ferry's
// bookkeeping statements. Other users' sessions are only visible with
// pg_read_all_stats (or as their owner); without it they are not counted.
type contentionIndicator struct{ cat catalog }

func (contentionIndicator) name() string { return "contention" }

func (c contentionIndicator) sql() string {
	return `SELECT count(*) FILTER (WHERE state = 'active')::int,
		       count(*) FILTER (WHERE state = 'active' OR state_change > now() - interval '100 milliseconds')::int
		FROM ` + c.cat.activity + `
		WHERE datname = current_database() AND backend_type = 'client backend'
		  AND pid <> pg_backend_pid() AND coalesce(application_name, '') NOT LIKE '` + ownAppNamePrefix + `%'
		  AND query NOT LIKE '%batched_background_migration%' AND query NOT LIKE '%ferry_bbm_%'`
}

// ownAppNamePrefix marks sessions of ferry processes (ferry's CLI names its
// connections "ferry"): neither its running statements nor its idle
// connections are an application to pace for.
const ownAppNamePrefix = "ferry"

// probeSQL reads, inside a sub-batch's transaction before it commits, the
// busy sessions (sql) and the sessions waiting on a lock this transaction
// holds: a row lock (they wait on its transaction id) or a lock on the
// table ($1, its oid: DDL queued behind us, and everyone queued behind the
// DDL). pg_locks needs no privilege, so sessions of other users count too.
// Last, whether a VACUUM works on the table (pg_stat_progress_vacuum shows
// autovacuum's table only to superusers and pg_read_all_stats members;
// to others it is never there).
func (c contentionIndicator) probeSQL() string {
	return `SELECT a.*, (SELECT count(*)::int FROM ` + c.cat.locks + `
		WHERE NOT granted AND pid <> pg_backend_pid()
		  AND ((locktype = 'transactionid' AND transactionid = pg_current_xact_id_if_assigned()::xid)
		    OR (locktype = 'relation' AND relation = $1::oid))),
		EXISTS (SELECT FROM ` + c.cat.progressVacuum + ` WHERE relid = $1::oid) FROM (` + c.sql() + `) a`
}

// probe is what a sub-batch saw of the others just before it committed:
// sessions running a statement (busy), those that ran one in the last
// 100 ms too (recent: an application's connections between requests),
// those waiting on the sub-batch's locks (blocked), and whether a VACUUM
// was working on the table.
type probe struct {
	ok                    bool // the probe ran
	busy, recent, blocked int
	vacuum                bool
}

// scan reads a probeSQL row.
func (pr *probe) scan(r pgx.Row) error { return r.Scan(&pr.busy, &pr.recent, &pr.blocked, &pr.vacuum) }

// sample reads the other sessions' activity (no blocked count).
func (c contentionIndicator) sample(ctx context.Context, db Queryer) (probe, error) {
	var p probe
	err := db.QueryRow(ctx, c.sql()).Scan(&p.busy, &p.recent)
	p.ok = err == nil
	return p, err
}

// pacer is the duty-cycle decision: samples in, duty and pauses out. It has
// no clock and no database, so tests feed it made-up samples and times.
type pacer struct {
	maxDuty, minDuty float64
	load             float64 // moving average of other busy sessions
	present          float64 // moving average of recently active ones
	samples          int
	last             time.Time // when the last sample was taken
	engaged          bool      // serving others: paced
	quietSince       time.Time // when load fell below the threshold while engaged
	// stmtCap caps the statement budget while sub-batches block others
	// (0: no cap); blocked counts the sessions they blocked.
	stmtCap time.Duration
	blocked int
	// burst is the statement time run since the last pause, maxBurst the
	// most a burst may take (0: pause after every sub-batch).
	burst, maxBurst time.Duration
	// ctl is the closed loop (pace_control.go): once it has measured
	// what others feel, it sets the duty instead of the session count.
	ctl latencyControl
	// vacuum: the last probe saw a VACUUM working on the table.
	vacuum bool
}

func newPacer(h HealthConfig) pacer {
	p := pacer{maxDuty: h.MaxDutyUnderLoad, minDuty: h.MinDutyUnderLoad, maxBurst: max(h.PaceBurst, 0)}
	if p.enabled() {
		p.ctl = newLatencyControl(h)
	}
	return p
}

// closedLoop reports whether the closed loop sets the duty now: it is on
// and has decided at least once.
func (p *pacer) closedLoop() bool { return p.ctl.on() && p.ctl.decided }

// enabled reports whether pacing can ever slow a batch.
func (p *pacer) enabled() bool { return p.maxDuty < 1 }

// observe adds one sample taken at now: how many other sessions were
// busy, and how many were busy or had been within 100 ms.
func (p *pacer) observe(busy, recent int, now time.Time) {
	// Both averages start from zero and weigh a sample by the time it
	// stands for (the first: a tenth of the time constant).
	dt := contentionTau / 10
	if !p.last.IsZero() {
		dt = max(now.Sub(p.last), 0)
	}
	p.last = now
	alpha := 1 - math.Exp(-float64(dt)/float64(contentionTau))
	x, r := float64(max(busy, 0)), float64(max(recent, busy, 0))
	p.load += alpha * (x - p.load)
	p.present += alpha * (r - p.present)
	p.samples++
	p.ctl.floor = min(p.openDuty(), closedLoopMaxDuty)
	switch {
	case p.load >= contentionThreshold || p.present >= presenceThreshold:
		p.engaged, p.quietSince = true, time.Time{}
	case !p.engaged:
	case p.quietSince.IsZero():
		p.quietSince = now
	case now.Sub(p.quietSince) >= contentionHold:
		p.engaged, p.quietSince = false, time.Time{}
	}
}

// observeBlocked adds what one sub-batch that took work did to others:
// blocked sessions waited on its locks. normal is the budget without cap.
func (p *pacer) observeBlocked(blocked int, work, normal time.Duration) {
	if p.paced() {
		// The cap regrows to the budget statements actually have: past
		// it, it limits nothing, and `bbm show` would call 40ms
		// statements "shortened" while they run at the paced budget.
		normal = min(normal, loadSubBatchBudget)
	}
	if blocked > 0 {
		p.blocked += blocked
		base := normal
		if p.stmtCap > 0 {
			base = p.stmtCap
		}
		p.stmtCap = max(minBlockingBudget, min(base, work)/blockingCut)
		return
	}
	if p.stmtCap > 0 {
		if p.stmtCap += p.stmtCap / blockingRegrow; p.stmtCap >= normal {
			p.stmtCap = 0
		}
	}
}

// duty is the share of time sub-batch statements may take: 1 while the
// database is idle; while it serves others the closed loop's duty once it
// has decided, else the open loop's. While a VACUUM works on the table the
// closed loop's duty is capped at vacuumMaxDuty: the canaries compare
// latencies under the migration with latencies between its statements,
// and a VACUUM of the table slows both, so they do not see what the two
// together do to others.
func (p *pacer) duty() float64 {
	if !p.enabled() || !p.engaged {
		return 1
	}
	if p.closedLoop() {
		d := math.Max(p.ctl.duty, p.ctl.floor)
		if p.vacuum {
			d = math.Min(d, math.Max(vacuumMaxDuty, p.ctl.floor))
		}
		return d
	}
	return p.openDuty()
}

// openDuty is the open loop's duty: MaxDutyUnderLoad for up to one busy
// session, falling in proportion to their number, never below
// MinDutyUnderLoad. It is the closed loop's floor too: the closed loop
// only ever adds to what this pacing, polite enough before it, allowed.
func (p *pacer) openDuty() float64 {
	d := p.maxDuty / max(p.load, 1)
	return math.Max(p.minDuty, math.Min(d, p.maxDuty))
}

// paced reports whether the batch is being slowed now.
func (p *pacer) paced() bool { return p.duty() < 1 }

// slowed reports whether the batch runs slower than at full speed for any
// reason: paced, or statements capped because they blocked others.
func (p *pacer) slowed() bool { return p.paced() || p.stmtCap > 0 }

// pause is how long to wait after a sub-batch that took work, so that
// statements take the duty share of the time, and the statement time the
// pause is for: sub-batches run back to back until they make a burst
// (burstLen), and 0 comes back until then.
func (p *pacer) pause(work time.Duration) (pause, burst time.Duration) {
	d := p.duty()
	if d >= 1 {
		p.burst = 0
		return 0, 0
	}
	if p.burst += max(work, 0); p.burst == 0 || p.burst < p.burstLen(d) {
		return 0, 0
	}
	burst, p.burst = p.burst, 0
	return min(time.Duration(float64(burst)*(1-d)/d), maxPacePause), burst
}

// burstLen is how much statement time a burst takes at duty d: d of
// pacedCycle, at least one statement, at most maxBurst.
func (p *pacer) burstLen(d float64) time.Duration {
	return min(max(time.Duration(d*float64(pacedCycle)), loadSubBatchBudget), p.maxBurst)
}

// budget is the sub-batch statement budget: normal, short while paced,
// shorter still while sub-batches block others.
func (p *pacer) budget(normal time.Duration) time.Duration {
	if p.paced() {
		normal = min(normal, loadSubBatchBudget)
	}
	if p.stmtCap > 0 {
		normal = min(normal, p.stmtCap)
	}
	return normal
}

// signal describes the pacing for `bbm show` (nil at full speed).
func (p *pacer) signal() *Signal {
	d := p.duty()
	if d >= 1 && p.stmtCap == 0 {
		return nil
	}
	var why []string
	if p.stmtCap > 0 {
		why = append(why, fmt.Sprintf("sessions waited on rows a sub-batch had locked: statements shortened to %s", p.stmtCap.Round(100*time.Microsecond)))
	}
	switch {
	case d >= 1:
	case p.closedLoop() && p.vacuum && d < p.ctl.duty:
		why = append(why, fmt.Sprintf("other sessions are using the database and a VACUUM works on the table: running %s%% of the time (duty cycle) until it ends",
			pct(d)))
	case p.closedLoop():
		floor := ""
		if p.ctl.impact > p.ctl.budget && d <= p.ctl.floor+1e-9 {
			floor = "; never below the share without it, `bbm.max_duty_under_load` over the busy sessions"
		}
		why = append(why, fmt.Sprintf("other sessions are using the database: running %s%% of the time (duty cycle): others' p99 %s (measured by canaries; budget %s, `bbm.max_latency_impact`%s)",
			pct(d), signedPct(max(p.ctl.impact, 0)), signedPct(p.ctl.budget), floor))
	case p.ctl.on():
		why = append(why, fmt.Sprintf("other sessions are using the database: running %s%% of the time (duty cycle) while measuring what others feel, see `bbm.max_latency_impact`",
			pct(d)))
	default:
		// No session count: presence alone (short statements, rarely
		// caught running) paces too, and "0.0 sessions busy" read as none.
		why = append(why, fmt.Sprintf("other sessions are using the database: running %s%% of the time (duty cycle), see `bbm.max_duty_under_load`",
			pct(d)))
	}
	return &Signal{Indicator: contentionIndicator{}.name(), Paced: true, Duty: d, Reason: strings.Join(why, "; ")}
}

func pct(f float64) string { return strconv.FormatFloat(f*100, 'g', 2, 64) }

// signedPct writes a change as "+18%" or "-3%".
func signedPct(f float64) string {
	s := strconv.FormatFloat(math.Round(f*100), 'f', 0, 64) + "%"
	if f >= 0 {
		s = "+" + s
	}
	return s
}

// paceSQL moves the shared pacing clock past a sub-batch that started $1
// microseconds ago and is charged $2 (its work plus its pause), and returns
// the seconds until the clock's time: when the caller's next sub-batch may
// start. The clock is the database's, so processes on hosts whose clocks
// disagree still share it; time the clock spent in the past is not banked.
const paceSQL = `UPDATE ferry_bbm_pace
	SET next_at = greatest(next_at, clock_timestamp() - $1 * interval '1 microsecond') + $2 * interval '1 microsecond'
	WHERE id = 1
	RETURNING extract(epoch FROM next_at - clock_timestamp())::float8`

// reservePace charges a paced sub-batch that took work to the shared
// pacing clock and returns how long to sleep before the next one. Alone,
// that is the pacer's own pause; behind other paced batches, longer.
func reservePace(ctx context.Context, db Queryer, work, charge time.Duration) (time.Duration, error) {
	var secs float64
	if err := db.QueryRow(ctx, paceSQL, work.Microseconds(), charge.Microseconds()).Scan(&secs); err != nil {
		return 0, fmt.Errorf("pacing clock: %w", err)
	}
	return max(time.Duration(secs*float64(time.Second)), 0), nil
}

// pacing is what a batch reports about its pacing (job metrics).
type pacing struct {
	Duty    float64 `json:"duty_cycle"`       // at the end of the batch
	Busy    float64 `json:"others_busy"`      // moving average of other busy sessions
	Paused  float64 `json:"paused_s"`         // seconds slept between sub-batches
	MinD    float64 `json:"min_duty_cycle"`   // lowest duty during the batch
	Blocked int     `json:"blocked_sessions"` // sessions that waited on its locks
	MinCap  float64 `json:"min_stmt_cap_ms,omitempty"`
	// The closed loop (pace_control.go): canaries run during the batch,
	// and the predicted rise of others' p99 at the final duty.
	Canaries int      `json:"canaries,omitempty"`
	Impact   *float64 `json:"others_p99_impact,omitempty"`
	MaxD     float64  `json:"max_duty_cycle,omitempty"` // highest duty while paced
	Vacuum   bool     `json:"vacuum,omitempty"`         // a VACUUM worked on the table meanwhile
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
	was := had && prev.slowed()
	switch now := p.slowed(); {
	case now && !was:
		e.log.Info("batched background migration paced: other sessions are busy or waited on its locks", zap.Int64("migration_id", m.ID),
			zap.Float64("others_busy", p.load), zap.Float64("duty_cycle", p.duty()), zap.Duration("statement_cap", p.stmtCap),
			zap.Int("blocked_sessions", p.blocked), zap.Bool("closed_loop", p.ctl.on()))
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
