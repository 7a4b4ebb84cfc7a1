package batched

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/sleep"
)

// Closed-loop pacing.
//
// The duty cycle of contention.go is an open loop: it knows that others
// use the database, not whether they are slowed. How much a sub-batch
// hurts a request that arrives while it runs depends on the machine, the
// statement and the load, and the fixed 2% had to be safe for the worst
// of them. So while paced, ferry measures what an application would feel:
// a canary, a tiny transaction that commits (it takes a transaction id, so
// its COMMIT waits for the WAL flush like an application's write does),
// run on a connection of its own, at a random moment inside each
// sub-batch statement (an "overlapping" request; three times in each of
// the first statements, busyShots) and once per 100 ms of the pause after
// it (3-20 times, an "idle" request). Requests
// arrive at random, so a share d (the duty) of the application's requests
// look like the overlapping canaries and the rest like the idle ones, and
// the application's p99 during the migration is the 99th percentile of
// that mixture. The controller (latencyControl) predicts it from the last
// few hundred canaries of each kind (at most canaryWindow old, or the
// newest few dozen at a slow pace; the idle ones' slowest tenth smoothed,
// idleTail) and compares it with the idle p99: the duty rises (at most doubling per
// decision) while the predicted increase stays within the budget
// (bbm.max_latency_impact), and falls at once, by half or more, when it
// does not. It never falls below the open loop's duty (pacer.openDuty,
// capped at closedLoopMaxDuty: the closed loop only adds to what the
// pacing before it allowed) nor rises above closedLoopMaxDuty.
//
// The prediction is only as good as the canary is like the application's
// requests; BENCHMARKS.md section 2 compares it with pgbench's own p99.
const (
	// defaultMaxLatencyImpact is the default budget: others' p99 may rise
	// by a fifth (1.2x), which leaves room under 1.5x for what the canary
	// does not see.
	defaultMaxLatencyImpact = 0.2
	// closedLoopMaxDuty caps the duty the controller may reach, because
	// the canaries mostly see less than an application does. Set beside
	// pgbench's own transactions (bench/bbm -trace), those due during a
	// sub-batch statement were over 1 ms 2-5.5 times as often as canaries
	// sent during one, and in 14 of 18 runs the canaries predicted at
	// least 10 points less than the load's latencies mixed the same way
	// (at 10%: +5-30% against +30-68%; at 5.6-6% the load's gave
	// +16-37%). At a fixed 10% a write load's p99 rose over 1.5x in 5 of
	// 8 runs at 1,000 tps, 1 of the 3 without canaries (BENCHMARKS.md
	// section 2, session 11). The migration's WAL and dirty pages slow
	// the requests between sub-batches too, which the canaries between
	// them see but the comparison with them does not. 7% from session 15
	// (a faster 2-core machine): at 6% the closed loop copied 2.0-2.7x
	// what the fixed 2% did, under 3x; at 8% and 10% pgbench's p99 went
	// over 1.5x in 2 of 6 runs; at 7% it stayed at or under 1.46x in 9.
	// In session 16 10% (with the open loop's 2% while a VACUUM worked on
	// the table) kept the p99 within 1.5x in 11 undisturbed runs and copied 2.8-4.4x, but the loop cut and
	// climbed back so often under a steady load that the rate of a
	// two-minute copy changed by up to 80% between its first and its last
	// part, and no ETA can follow that.
	closedLoopMaxDuty = 0.07
	// vacuumMaxDuty caps the duty while a VACUUM works on the table
	// (pacer.duty). In session 15 the write load's p99 stayed within 1.5x
	// at 6% and 7% in every run where the table's autovacuum ran during
	// the migration, and went past it at 8% and 10%. Not the floor: a
	// VACUUM of a large table lasts long, and at 2% a migration that
	// triggers one (every row it copies leaves a dead one) spends a good
	// part of its time at a fifth of its speed.
	vacuumMaxDuty = 0.05
	// canaryRing is how many canaries of each kind the prediction uses:
	// a 99th percentile of the idle ones is their fifth slowest.
	canaryRing = 512
	// canaryWindow is how old a canary may be and still count. Without it
	// a burst of slow canaries (an autovacuum, an ANALYZE) held a low duty
	// for minutes: at 0.5% an overlapping canary comes every two seconds,
	// so 512 of them are a quarter of an hour of history. The window
	// stretches back to the minimum counts below when it holds fewer, or a
	// slow pace would stop the decisions altogether, but never beyond
	// canaryMaxAge: the pacer outlives batches and pauses, and a canary
	// from before a quiet hour says nothing about now.
	canaryWindow = 30 * time.Second
	canaryMaxAge = 10 * canaryWindow
	// minIdleCanaries and minBusyCanaries must be seen before the first
	// decision; decideEvery overlapping canaries make each later one.
	minIdleCanaries = 48
	minBusyCanaries = 8
	decideEvery     = 8
	// tailCanaries is how many overlapping canaries must lie beyond the
	// quantile a duty's prediction rests on: at duty d the mixture's p99
	// is about the overlapping canaries' 1-0.01/d quantile (their p95 at
	// 20%), which n of them only resolve for d <= n*0.01/tailCanaries.
	// Without it a few harmless ones in a row raised the duty to the
	// ceiling before its harm could show: at 2,000 tps a write load's p99
	// rose 1.6-1.7x while every decision predicted +20% or less.
	tailCanaries = 3
	// Each pause gets one idle canary per idleCanaryEvery of it, at
	// random moments, at least idleCanaries and at most maxIdleCanaries:
	// at the floor's two-second pauses three would give too few for a
	// 99th percentile inside canaryWindow.
	idleCanaries    = 3
	maxIdleCanaries = 20
	idleCanaryEvery = 100 * time.Millisecond
	// climbShots overlapping canaries go with each statement until
	// climbCanaries of them are in (busyShots), one after that. With one
	// per statement the canaries vouched for the ceiling only after about
	// ten seconds (two statements a second at 2%, 21 canaries needed), a
	// good part of a short migration at a third of its speed. A
	// statement's several canaries tell less than as many statements'
	// would, so it is only for the climb: in steady state denser canaries
	// were not better (BENCHMARKS.md section 2, sessions 11 and 12).
	climbShots    = 3
	climbCanaries = int(tailCanaries * closedLoopMaxDuty * 100)
	// raiseStep and cutStep bound one decision: up to double, down by
	// at least half when over the budget.
	raiseStep = 2
	cutStep   = 2
)

// latRing holds canary latencies in microseconds and when each was sent,
// newest overwriting oldest.
type latRing struct {
	v    [canaryRing]float32
	at   [canaryRing]int64 // unix nanoseconds
	n, i int
}

func (r *latRing) add(us float32, at time.Time) {
	r.v[r.i], r.at[r.i] = us, at.UnixNano()
	r.i = (r.i + 1) % canaryRing
	r.n = min(r.n+1, canaryRing)
}

// count is how many canaries were sent at or after since.
func (r *latRing) count(since time.Time) int {
	from, n := since.UnixNano(), 0
	for _, at := range r.at[:r.n] {
		if at >= from {
			n++
		}
	}
	return n
}

// sorted returns the latencies of the canaries sent at or after since, or
// of the newest atLeast when fewer were, down to oldest.
func (r *latRing) sorted(since, oldest time.Time, atLeast int) []float64 {
	out := make([]float64, 0, r.n)
	from := since.UnixNano()
	if k := min(atLeast, r.n); k > 0 {
		ats := slices.Clone(r.at[:r.n])
		slices.Sort(ats)
		from = max(min(from, ats[r.n-k]), oldest.UnixNano())
	}
	for i := range r.n {
		if r.at[i] >= from {
			out = append(out, float64(r.v[i]))
		}
	}
	slices.Sort(out)
	return out
}

// latencyControl is the closed-loop decision: canary latencies in, duty
// out. Like pacer it has no clock and no database, so tests feed it
// made-up latencies. It is a value (fixed arrays), copied with the pacer
// from batch to batch.
type latencyControl struct {
	budget     float64 // allowed rise of others' p99 (0.2: +20%); <= 0: off
	floor      float64 // lowest duty: the open loop's, set by the pacer
	duty       float64 // current duty; 0 until started
	idle, busy latRing
	fresh      int       // overlapping canaries since the last decision
	newest     time.Time // when the newest canary was sent
	impact     float64   // predicted rise of others' p99 at duty (last decision)
	decided    bool      // a decision was made: impact is meaningful
	decisions  int
}

func newLatencyControl(h HealthConfig) latencyControl {
	return latencyControl{budget: h.MaxLatencyImpact, floor: h.MinDutyUnderLoad, duty: h.MaxDutyUnderLoad}
}

// on reports whether the closed loop is in use.
func (c *latencyControl) on() bool { return c.budget > 0 }

// observe adds one canary: when it was sent, its latency, and whether it
// ran while a sub-batch statement did.
func (c *latencyControl) observe(at time.Time, lat time.Duration, overlap bool) {
	us := float32(lat.Microseconds())
	if at.After(c.newest) {
		c.newest = at
	}
	if overlap {
		c.busy.add(us, at)
		c.fresh++
		return
	}
	c.idle.add(us, at)
}

// quantile q of sorted samples (nearest rank).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[min(len(v)-1, max(0, int(math.Ceil(q*float64(len(v))))-1))]
}

// cdf is the share of sorted samples at or below x.
func cdf(v []float64, x float64) float64 {
	i, found := slices.BinarySearch(v, x)
	for found && i < len(v) && v[i] == x {
		i++
	}
	return float64(i) / float64(len(v))
}

// mixQuantile is the q quantile of requests of which a share d look like
// busy and the rest like idle: the smallest sample x with
// (1-d)*F_idle(x) + d*F_busy(x) >= q.
func mixQuantile(idle, busy []float64, d, q float64) float64 {
	xs := append(slices.Clone(idle), busy...)
	slices.Sort(xs)
	for _, x := range xs {
		if (1-d)*cdf(idle, x)+d*cdf(busy, x) >= q-1e-12 {
			return x
		}
	}
	return xs[len(xs)-1]
}

// MixedP99Rise is how much the p99 of requests of which a share d look
// like busy and the rest like idle (latencies, sorted) is above idle's
// own p99 (0.2: +20%), from the samples as they are. bench/bbm -trace
// applies it to a load's own latencies, thousands of them; the controller
// predicts from a few hundred canaries with idleTail.rise.
func MixedP99Rise(idle, busy []float64, d float64) float64 {
	base := quantile(idle, 0.99)
	if base <= 0 {
		base = 1
	}
	return mixQuantile(idle, busy, d, 0.99)/base - 1
}

// tailFrom is where idleTail's fitted tail of the idle canaries
// begins: their slowest tenth, a few dozen of a window's few hundred.
const tailFrom = 0.9

// idleTail is the idle canaries' distribution with its slowest tenth
// replaced by an exponential fitted to it (the mean excess over its 90th
// percentile u). The idle p99 of a few hundred canaries is their second
// or third slowest, and at a few percent duty the mixture's p99 falls
// among the slowest two or three as well: read off the samples, the
// prediction at 7% jumped between +0% and +40-80% from one decision to
// the next, and every jump over the budget cut the duty, while the load's
// own latencies, mixed the same way, stayed where they were
// (BENCHMARKS.md section 2, session 18).
type idleTail struct {
	v            []float64 // sorted
	u, fu, sigma float64   // 90th percentile, the share at or below it, mean excess
}

func fitIdleTail(v []float64) idleTail {
	t := idleTail{v: v, u: quantile(v, tailFrom), sigma: 1}
	t.fu = cdf(v, t.u)
	var sum float64
	n := 0
	for _, x := range v {
		if x > t.u {
			sum, n = sum+x-t.u, n+1
		}
	}
	if n > 0 {
		t.sigma = max(sum/float64(n), 1)
	}
	return t
}

func (t idleTail) cdf(x float64) float64 {
	if x <= t.u {
		return cdf(t.v, x)
	}
	return 1 - (1-t.fu)*math.Exp(-(x-t.u)/t.sigma)
}

func (t idleTail) quantile(q float64) float64 {
	if q <= t.fu {
		return quantile(t.v, q)
	}
	return t.u + t.sigma*math.Log((1-t.fu)/(1-q))
}

// rise is the controller's prediction: MixedP99Rise with the idle
// canaries' tail fitted, the mixture's p99 found by bisection. A decision
// fits the tail once and asks for the rise at many duties.
func (t idleTail) rise(busy []float64, d float64) float64 {
	base := max(t.quantile(0.99), 1)
	mix := func(x float64) float64 { return (1-d)*t.cdf(x) + d*cdf(busy, x) }
	lo, hi := 0.0, max(base, busy[len(busy)-1])
	for i := 0; mix(hi) < 0.99 && i < 64; i++ {
		hi *= 2
	}
	for range 40 {
		if mid := (lo + hi) / 2; mix(mid) >= 0.99 {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi/base - 1
}

// decide moves the duty when enough new canaries came in, and reports
// whether it did decide.
func (c *latencyControl) decide() bool {
	if !c.on() || c.fresh < decideEvery {
		return false
	}
	since, oldest := c.newest.Add(-canaryWindow), c.newest.Add(-canaryMaxAge)
	idle, busy := c.idle.sorted(since, oldest, minIdleCanaries), c.busy.sorted(since, oldest, minBusyCanaries)
	if len(idle) < minIdleCanaries || len(busy) < minBusyCanaries {
		return false
	}
	c.fresh = 0
	tail := fitIdleTail(idle)
	// The largest duty within the budget that the overlapping canaries
	// can vouch for, by bisection on a log scale: the predicted impact
	// grows with the duty.
	best, ceiling := c.floor, min(closedLoopMaxDuty, supportedDuty(len(busy)))
	if ceiling > c.floor && tail.rise(busy, c.floor) <= c.budget {
		lo, hi := math.Log(c.floor), math.Log(ceiling)
		if tail.rise(busy, ceiling) <= c.budget {
			lo = hi
		} else {
			for range 24 {
				mid := (lo + hi) / 2
				if tail.rise(busy, math.Exp(mid)) <= c.budget {
					lo = mid
				} else {
					hi = mid
				}
			}
		}
		best = math.Exp(lo)
	}
	cur := c.duty
	if tail.rise(busy, cur) > c.budget {
		c.duty = min(best, cur/cutStep) // back off fast
	} else {
		c.duty = min(best, cur*raiseStep)
	}
	c.duty = math.Max(c.floor, math.Min(c.duty, closedLoopMaxDuty))
	c.impact = tail.rise(busy, c.duty)
	c.decided = true
	c.decisions++
	return true
}

// supportedDuty is the highest duty n overlapping canaries can predict a
// p99 for (tailCanaries).
func supportedDuty(n int) float64 {
	return float64(n) * 0.01 / tailCanaries
}

// canarySQL takes a transaction id, so its commit writes a commit record
// and waits for the WAL flush, as an application's write does.
const canarySQL = `SELECT pg_current_xact_id()`

// canaryShot is one canary's measurement.
type canaryShot struct {
	at  time.Time // when it was sent
	lat time.Duration
}

// canary runs canaries on a connection of its own at the times the batch
// asks for. It never blocks the batch: requests beyond a pause's worth
// are dropped, results are read when the batch has time.
type canary struct {
	conn   *pgxpool.Conn
	req    chan time.Time
	res    chan canaryShot
	failed chan error
	cancel context.CancelFunc
	done   chan struct{}
}

var errNoCanaryConn = errors.New("every connection of the pool is in use")

// startCanary takes a connection for the canary: a batch whose pool has
// none to spare, or that cannot get one in time, paces open-loop.
func startCanary(ctx context.Context, pool *pgxpool.Pool) (*canary, error) {
	if st := pool.Stat(); st.AcquiredConns() >= st.MaxConns() {
		return nil, errNoCanaryConn // not worth a wait: the pool is busy
	}
	// The pool has room, but may have to dial: a moment on a busy host.
	actx, acancel := context.WithTimeout(ctx, 2*time.Second)
	conn, err := pool.Acquire(actx)
	acancel()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &canary{conn: conn, req: make(chan time.Time, 4*maxIdleCanaries), res: make(chan canaryShot, 64), failed: make(chan error, 1),
		cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	return c, nil
}

func (c *canary) run(ctx context.Context) {
	defer close(c.done)
	for {
		var at time.Time
		select {
		case <-ctx.Done():
			return
		case at = <-c.req:
		}
		if d := time.Until(at); d > 0 && !sleep.For(ctx, d) {
			return
		}
		t0 := time.Now()
		if _, err := c.conn.Exec(ctx, canarySQL); err != nil {
			if ctx.Err() == nil {
				c.failed <- err
			}
			return
		}
		select {
		case c.res <- canaryShot{at: t0, lat: time.Since(t0)}:
		default:
		}
	}
}

// fire asks for n canaries at random moments in [from, from+span), in
// order of time (the canary runs them one after the other).
func (c *canary) fire(from time.Time, span time.Duration, n int) {
	ats := make([]time.Time, n)
	for i := range ats {
		ats[i] = from
		if span > 0 {
			ats[i] = from.Add(time.Duration(rand.Int64N(int64(span))))
		}
	}
	slices.SortFunc(ats, time.Time.Compare)
	for _, at := range ats {
		select {
		case c.req <- at:
		default:
			return
		}
	}
}

// idleShots is how many idle canaries a pause gets: until the first
// decision, which needs minIdleCanaries of them, three times as many, up
// to all of those: at the floor's two-second pauses the first decision
// then comes after the first pause, and the duty stops sitting at the
// floor for the first seconds of every migration.
func idleShots(pause time.Duration, decided bool) int {
	if !decided {
		return min(max(int(3*pause/idleCanaryEvery), idleCanaries), minIdleCanaries)
	}
	return min(max(int(pause/idleCanaryEvery), idleCanaries), maxIdleCanaries)
}

// busyShots is how many overlapping canaries a statement starting at now
// gets: climbShots until the controller holds climbCanaries of them
// younger than canaryMaxAge (after a long pause the loop climbs again).
func (c *latencyControl) busyShots(now time.Time) int {
	if c.busy.count(now.Add(-canaryMaxAge)) < climbCanaries {
		return climbShots
	}
	return 1
}

// collect hands the canaries measured so far to the controller (and to
// trace, when set), each counted as overlapping a statement or not, and
// lets it decide. It returns how many it handed over, and false once the
// canary failed.
func (c *canary) collect(ctl *latencyControl, statements *spans, trace Tracer) (int, bool) {
	n := 0
	for {
		select {
		case shot := <-c.res:
			overlap := statements.overlaps(shot.at)
			if trace != nil {
				trace.Canary(shot.at, shot.lat, overlap)
			}
			ctl.observe(shot.at, shot.lat, overlap)
			n++
			continue
		case <-c.failed:
			return n, false
		default:
		}
		break
	}
	ctl.decide()
	return n, true
}

// stop ends the canary and gives its connection back.
func (c *canary) stop() {
	c.cancel()
	<-c.done
	c.conn.Release() // the pool drops a connection left mid-statement

}

// span is a sub-batch statement's time, for telling canaries apart.
type span struct{ from, to time.Time }

// spans keeps the last few statement times of a batch.
type spans struct {
	v [8]span
	i int
}

func (s *spans) add(from, to time.Time) {
	s.v[s.i%len(s.v)] = span{from, to}
	s.i++
}

// overlaps reports whether t fell inside one of the recorded statements.
func (s *spans) overlaps(t time.Time) bool {
	for _, sp := range s.v {
		if !sp.from.IsZero() && !t.Before(sp.from) && t.Before(sp.to) {
			return true
		}
	}
	return false
}
