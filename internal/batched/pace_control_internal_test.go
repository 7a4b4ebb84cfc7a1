package batched

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// canaryFeed makes up canary latencies: idle ones around 400 µs with a
// tail, overlapping ones slowed by slow (a factor) with probability hit.
type canaryFeed struct {
	r         *rand.Rand
	hit, slow float64
	now       time.Time     // moves on step a sub-batch
	step      time.Duration // 10 ms unless a test sets it
}

func newFeed(hit, slow float64) *canaryFeed {
	return &canaryFeed{r: rand.New(rand.NewPCG(1, 2)), hit: hit, slow: slow}
}

func (f *canaryFeed) idle() time.Duration {
	us := 300 + 100*f.r.ExpFloat64()
	return time.Duration(us) * time.Microsecond
}

func (f *canaryFeed) busy() time.Duration {
	d := f.idle()
	if f.r.Float64() < f.hit {
		d = time.Duration(float64(d) * f.slow)
	}
	return d
}

// feed gives the controller one sub-batch's canaries (one overlapping,
// idleCanaries idle: execute's fewest, idleShots) n times, returning the
// decisions made.
func (f *canaryFeed) feed(c *latencyControl, n int) int {
	decided := 0
	for range n {
		f.now = f.now.Add(cmp.Or(f.step, 10*time.Millisecond))
		c.observe(f.now, f.busy(), true)
		for range idleCanaries {
			c.observe(f.now, f.idle(), false)
		}
		if c.decide() {
			decided++
		}
	}
	return decided
}

// engagedPacer is a pacer that one busy session has engaged: the open
// loop's duty, the closed loop's floor, is MaxDutyUnderLoad.
func engagedPacer(h HealthConfig) pacer { return busyPacer(h, 1) }

// busyPacer is a pacer engaged by busy sessions for long enough that the
// open loop's duty (and so the closed loop's floor) is
// MaxDutyUnderLoad/busy, at least MinDutyUnderLoad.
func busyPacer(h HealthConfig, busy int) pacer {
	p := newPacer(h.withDefaults())
	for i := range 40 {
		p.observe(busy, busy+5, time.Unix(0, 0).Add(time.Duration(i)*100*time.Millisecond))
	}
	return p
}

// Before it has measured anything the closed loop leaves the duty to the
// open loop; with enough canaries it decides every decideEvery
// overlapping ones.
func TestLatencyControlWaitsForCanaries(t *testing.T) {
	p := engagedPacer(HealthConfig{})
	if !p.ctl.on() || p.closedLoop() || p.duty() != defaultMaxDutyUnderLoad {
		t.Fatalf("before any canary: closed loop %v, duty %v", p.closedLoop(), p.duty())
	}
	if s := p.signal(); s == nil || !strings.Contains(s.Reason, "while measuring what others feel") {
		t.Fatalf("signal before the first decision: %+v", s)
	}
	f := newFeed(0, 1)
	// Sub-batches short of minIdleCanaries idle canaries: no decision.
	before := (minIdleCanaries - 1) / idleCanaries
	if n := f.feed(&p.ctl, before); n != 0 || p.closedLoop() {
		t.Fatalf("decided %d times on %d idle canaries", n, p.ctl.idle.n)
	}
	if n := f.feed(&p.ctl, 1); n != 1 || !p.closedLoop() {
		t.Fatalf("decided %d times after %d idle and %d overlapping canaries, want once", n, p.ctl.idle.n, p.ctl.busy.n)
	}
	if n := f.feed(&p.ctl, 10*decideEvery); n != 10 {
		t.Fatalf("decided %d times in %d sub-batches, want 10", n, 10*decideEvery)
	}
}

// Sub-batches that slow no one: the duty rises by at most raiseStep per
// decision up to the ceiling, and the reason says what it measured.
func TestLatencyControlRaisesWhileHarmless(t *testing.T) {
	p := engagedPacer(HealthConfig{})
	f := newFeed(0, 1)
	f.feed(&p.ctl, 40)
	prev := p.duty()
	for range 20 {
		f.feed(&p.ctl, decideEvery)
		d := p.duty()
		if d < prev || d > prev*raiseStep+1e-9 {
			t.Fatalf("duty %v after %v: want a rise of at most x%v", d, prev, raiseStep)
		}
		prev = d
	}
	if prev != closedLoopMaxDuty {
		t.Fatalf("duty %v after 20 harmless decisions, want the ceiling %v", prev, closedLoopMaxDuty)
	}
	if p.ctl.impact > p.ctl.budget {
		t.Fatalf("predicted impact %v over the budget %v", p.ctl.impact, p.ctl.budget)
	}
	s := p.signal()
	if s == nil || !s.Paced || s.Duty != closedLoopMaxDuty ||
		!strings.Contains(s.Reason, fmt.Sprintf("running %.0f%% of the time", 100*closedLoopMaxDuty)) || !strings.Contains(s.Reason, "others' p99 +") ||
		!strings.Contains(s.Reason, "budget +20%, `bbm.max_latency_impact`") {
		t.Fatalf("signal %+v", s)
	}
	// Pauses follow the duty the controller chose.
	work := p.burstLen(p.duty())
	if got, _ := p.pause(work); got != time.Duration(float64(work)*(1-closedLoopMaxDuty)/closedLoopMaxDuty) {
		t.Fatalf("pause %s after a %s burst at duty %v", got, work, p.duty())
	}
}

// While a VACUUM works on the table the closed loop's duty is at most
// vacuumMaxDuty, and the reason says why; after it, the closed loop's
// again. A duty below the cap is left alone.
func TestLatencyControlCappedWhileVacuum(t *testing.T) {
	p := engagedPacer(HealthConfig{})
	newFeed(0, 1).feed(&p.ctl, 200)
	if p.duty() != closedLoopMaxDuty {
		t.Fatalf("duty %v after harmless canaries, want the ceiling", p.duty())
	}
	p.vacuum = true
	if p.duty() != vacuumMaxDuty {
		t.Fatalf("duty %v while a VACUUM works on the table, want %v", p.duty(), vacuumMaxDuty)
	}
	if s := p.signal(); s == nil || !strings.Contains(s.Reason, "a VACUUM works on the table: running 5% of the time") {
		t.Fatalf("signal %+v", s)
	}
	p.vacuum = false
	if p.duty() != closedLoopMaxDuty {
		t.Fatalf("duty %v after the VACUUM, want the ceiling again", p.duty())
	}
	p.ctl.duty, p.vacuum = 0.03, true
	if p.duty() != 0.03 {
		t.Fatalf("duty %v under the cap during a VACUUM, want 0.03 kept", p.duty())
	}
	if s := p.signal(); s == nil || strings.Contains(s.Reason, "VACUUM") {
		t.Fatalf("signal %+v: the VACUUM did not change the duty", s)
	}
}

// Sub-batches that slow every request during them by 10x: from the
// ceiling the duty halves (or more) at every decision while the predicted
// p99 is over budget, down to about 1% (as many slowed requests as a p99
// hides) but never below the open loop's duty: the closed loop only adds
// to what the pacing before it allowed. With one busy session that floor
// (2%) holds it over budget; with eight it is MinDutyUnderLoad.
func TestLatencyControlBacksOffFast(t *testing.T) {
	for _, c := range []struct {
		busy  int
		floor float64
	}{{1, defaultMaxDutyUnderLoad}, {8, defaultMinDutyUnderLoad}} {
		p := busyPacer(HealthConfig{}, c.busy)
		f := newFeed(0, 1)
		f.feed(&p.ctl, 40+20*decideEvery) // harmless: up to the ceiling
		if p.duty() != closedLoopMaxDuty {
			t.Fatalf("%d busy: duty %v after harmless canaries, want the ceiling", c.busy, p.duty())
		}
		f.hit, f.slow = 1, 10
		for range 12 {
			prev := p.duty()
			over := fitIdleTail(p.ctl.idle.sorted(time.Time{}, time.Time{}, 0)).rise(p.ctl.busy.sorted(time.Time{}, time.Time{}, 0), prev) > p.ctl.budget
			f.feed(&p.ctl, decideEvery)
			if d := p.duty(); over && d > max(prev/cutStep, c.floor)+1e-9 {
				t.Fatalf("%d busy: duty %v after %v while over budget, want at most half", c.busy, d, prev)
			}
		}
		f.feed(&p.ctl, canaryRing) // only slowed canaries left
		// About 1% of requests slowed hide below the p99; the floor may
		// hold the duty above that, over budget.
		d := p.duty()
		if d < c.floor-1e-9 || d > max(c.floor, 0.0101) {
			t.Fatalf("%d busy: duty %v, want at most 1%% and not below the open loop's %v", c.busy, d, c.floor)
		}
		if held := d > 0.0101; held != (p.ctl.impact > p.ctl.budget) {
			t.Fatalf("%d busy: duty %v with predicted impact %v (budget %v)", c.busy, d, p.ctl.impact, p.ctl.budget)
		}
		// bbm show says why it runs over the budget.
		held := strings.Contains(p.signal().Reason, "never below the share without it, `bbm.max_duty_under_load` over the busy sessions")
		if held != (p.ctl.impact > p.ctl.budget) {
			t.Fatalf("%d busy: reason %q with predicted impact %v", c.busy, p.signal().Reason, p.ctl.impact)
		}
	}
}

// A max_duty_under_load above the closed loop's ceiling is where it
// starts, not a floor above the ceiling: with every request slowed the
// duty is the ceiling, not 50%.
func TestLatencyControlFloorCappedAtCeiling(t *testing.T) {
	p := engagedPacer(HealthConfig{MaxDutyUnderLoad: 0.5})
	newFeed(1, 10).feed(&p.ctl, 40+10*decideEvery)
	if d := p.duty(); d > closedLoopMaxDuty {
		t.Fatalf("duty %v with max_duty_under_load 0.5 and every request slowed, want at most %v", d, closedLoopMaxDuty)
	}
}

// Some requests during a sub-batch are slowed: the duty settles where the
// predicted p99 rise meets the budget, below the ceiling, and a larger
// budget lets it run more of the time.
func TestLatencyControlSettlesAtBudget(t *testing.T) {
	settle := func(budget float64) latencyControl {
		p := engagedPacer(HealthConfig{MaxLatencyImpact: budget})
		newFeed(0.3, 5).feed(&p.ctl, 1000)
		return p.ctl
	}
	c := settle(0.2)
	idle, busy := c.idle.sorted(time.Time{}, time.Time{}, 0), c.busy.sorted(time.Time{}, time.Time{}, 0)
	if c.duty <= defaultMinDutyUnderLoad || c.duty >= closedLoopMaxDuty {
		t.Fatalf("duty %v, want between the floor and the ceiling", c.duty)
	}
	if got := fitIdleTail(idle).rise(busy, c.duty); got > c.budget {
		t.Fatalf("predicted impact %v at duty %v over the budget", got, c.duty)
	}
	if got := fitIdleTail(idle).rise(busy, c.duty*1.5); got <= c.budget {
		t.Fatalf("predicted impact %v at 1.5x the duty %v still within the budget: it stopped short", got, c.duty)
	}
	if wide := settle(1); wide.duty <= c.duty {
		t.Fatalf("budget +100%%: duty %v, not above %v at +20%%", wide.duty, c.duty)
	}
}

// A burst of slow canaries (an autovacuum) pushes the duty to the floor;
// once the burst is older than canaryWindow the duty climbs back, although
// at the floor's pace (a sub-batch every 600 ms) the ring still holds
// mostly canaries from the burst.
func TestLatencyControlForgetsOldCanaries(t *testing.T) {
	p := busyPacer(HealthConfig{}, 8)
	f := newFeed(1, 10)
	f.feed(&p.ctl, 200)
	if d := p.duty(); d > 0.0101 {
		t.Fatalf("duty %v after the burst, want at most 1%%", d)
	}
	f.hit, f.step = 0, 600*time.Millisecond
	f.feed(&p.ctl, 100) // 60 s; the ring keeps 412 busy canaries of the burst
	// As high as the 50 overlapping canaries of the window vouch for (a
	// real batch gets more at a higher duty: one per statement of longer
	// bursts).
	if d, want := p.duty(), min(closedLoopMaxDuty, supportedDuty(int(canaryWindow/f.step))); d < want-1e-9 {
		t.Fatalf("duty %v a minute after the burst, want back at %v", d, want)
	}
}

// At a slow pace canaryWindow holds fewer canaries than a decision needs;
// the window stretches back to them instead of the duty staying at the
// floor for good, as it did in session 7's bench runs (0.5%: 2 s pauses,
// three idle canaries each then), but not beyond canaryMaxAge.
func TestLatencyControlDecidesAtTheFloor(t *testing.T) {
	p := busyPacer(HealthConfig{}, 8)
	f := newFeed(1, 10)
	f.feed(&p.ctl, 200)
	if d := p.duty(); d > 0.0101 {
		t.Fatalf("duty %v after the burst, want at most 1%%", d)
	}
	// Three idle canaries a pause, one sub-batch every 2.01 s: 45 idle
	// canaries in canaryWindow, fewer than minIdleCanaries.
	f.hit, f.step = 0, 2010*time.Millisecond
	before := p.ctl.decisions
	f.feed(&p.ctl, 200)
	if p.ctl.decisions == before {
		t.Fatal("no decision in 400 s at the floor's pace")
	}
	// As high as the minBusyCanaries the window stretches to vouch for.
	if d, want := p.duty(), min(closedLoopMaxDuty, supportedDuty(int(canaryWindow/f.step)+1)); d < want-1e-9 {
		t.Fatalf("duty %v after 400 harmless seconds, want back at %v", d, want)
	}
	// Sub-batches 5 s apart (other batches' turns on the shared clock):
	// six overlapping canaries in the window, fewer than minBusyCanaries.
	f.hit, f.step = 1, 5*time.Second
	before = p.ctl.decisions
	f.feed(&p.ctl, 10*decideEvery)
	if p.ctl.decisions < before+5 {
		t.Fatalf("%d decisions in %d sub-batches 5 s apart, want about 10", p.ctl.decisions-before, 10*decideEvery)
	}
	if d := p.duty(); d > 0.0101 {
		t.Fatalf("duty %v after slowed canaries 5 s apart, want at most 1%%", d)
	}
	// Canaries from before a quiet hour do not count.
	f.hit, f.step = 0, time.Hour
	f.feed(&p.ctl, 1)
	f.step = 10 * time.Millisecond
	if n := f.feed(&p.ctl, decideEvery-1); n != 0 {
		t.Fatalf("decided %d times on canaries an hour old", n)
	}
}

// A pause gets an idle canary per idleCanaryEvery, within bounds.
func TestIdleShots(t *testing.T) {
	for _, c := range []struct {
		pause time.Duration
		want  int
	}{{0, idleCanaries}, {200 * time.Millisecond, idleCanaries}, {time.Second, 10}, {2 * time.Second, maxIdleCanaries}, {time.Minute, maxIdleCanaries}} {
		if got := idleShots(c.pause, true); got != c.want {
			t.Fatalf("pause %s: %d idle canaries, want %d", c.pause, got, c.want)
		}
	}
	// Before the first decision, three times as many, up to all it
	// needs: the first decision comes after the first pause.
	for _, c := range []struct {
		pause time.Duration
		want  int
	}{{0, idleCanaries}, {time.Second, 30}, {2 * time.Second, minIdleCanaries}, {time.Minute, minIdleCanaries}} {
		if got := idleShots(c.pause, false); got != c.want {
			t.Fatalf("before deciding, pause %s: %d idle canaries, want %d", c.pause, got, c.want)
		}
	}
}

// Each statement gets climbShots overlapping canaries until the
// controller holds enough of them to vouch for the ceiling, one after;
// after a long pause, dense again.
func TestBusyShotsDenseOnlyForTheClimb(t *testing.T) {
	c := newLatencyControl(HealthConfig{}.withDefaults())
	at := time.Unix(1000, 0)
	if got := c.busyShots(at); got != climbShots {
		t.Fatalf("before any canary: %d per statement, want %d", got, climbShots)
	}
	if supportedDuty(climbCanaries) < closedLoopMaxDuty-1e-9 || supportedDuty(climbCanaries-1) >= closedLoopMaxDuty {
		t.Fatalf("climbCanaries %d: not the fewest that vouch for the ceiling %v", climbCanaries, closedLoopMaxDuty)
	}
	for i := range climbCanaries - 1 {
		c.observe(at.Add(time.Duration(i)*time.Millisecond), time.Millisecond, true)
		c.observe(at.Add(time.Duration(i)*time.Millisecond), time.Millisecond, false)
	}
	now := at.Add(time.Second)
	if got := c.busyShots(now); got != climbShots {
		t.Fatalf("%d overlapping canaries in: %d per statement, want %d", climbCanaries-1, got, climbShots)
	}
	c.observe(now, time.Millisecond, true)
	if got := c.busyShots(now); got != 1 {
		t.Fatalf("%d overlapping canaries in: %d per statement, want 1", climbCanaries, got)
	}
	if got := c.busyShots(now.Add(canaryMaxAge + time.Second)); got != climbShots {
		t.Fatalf("after a pause of canaryMaxAge: %d per statement, want %d", got, climbShots)
	}
}

// The window keeps canaries younger than since, or the newest atLeast,
// none older than oldest.
func TestLatRingSortedStretches(t *testing.T) {
	var r latRing
	t0 := time.Unix(1000, 0)
	for i := range 10 {
		r.add(float32(10-i), t0.Add(time.Duration(i)*time.Second)) // latencies 10..1, newest smallest
	}
	since := t0.Add(7 * time.Second)
	if got := r.sorted(since, t0, 0); len(got) != 3 || got[2] != 3 {
		t.Fatalf("since +7s: %v, want [1 2 3]", got)
	}
	if got := r.sorted(since, t0, 5); len(got) != 5 || got[4] != 5 {
		t.Fatalf("since +7s, at least 5: %v, want [1 2 3 4 5]", got)
	}
	if got := r.sorted(since, t0, 50); len(got) != 10 {
		t.Fatalf("at least 50 of 10: %v, want all 10", got)
	}
	if got := r.sorted(since, t0.Add(4*time.Second), 50); len(got) != 6 {
		t.Fatalf("at least 50, none before +4s: %v, want 6", got)
	}
}

// A negative budget turns the closed loop off: canaries change nothing
// and the duty is the open loop's.
func TestLatencyControlOff(t *testing.T) {
	p := engagedPacer(HealthConfig{MaxLatencyImpact: -1})
	newFeed(0, 1).feed(&p.ctl, 200)
	if p.ctl.on() || p.closedLoop() || p.duty() != defaultMaxDutyUnderLoad {
		t.Fatalf("closed loop off: duty %v", p.duty())
	}
	if s := p.signal(); s == nil || !strings.Contains(s.Reason, "`bbm.max_duty_under_load`") {
		t.Fatalf("signal %+v", s)
	}
	// No pacing at all: no controller either.
	q := engagedPacer(HealthConfig{MaxDutyUnderLoad: 1})
	if q.ctl.on() || q.duty() != 1 {
		t.Fatalf("MaxDutyUnderLoad 1: closed loop %v, duty %v", q.ctl.on(), q.duty())
	}
}

// The mixture's quantile: none of the busy share gives the idle quantile,
// all of it the busy one, and in between a share above 1% of slow
// requests moves the 99th percentile to them.
func TestMixQuantile(t *testing.T) {
	idle := make([]float64, 100)
	busy := make([]float64, 100)
	for i := range idle {
		idle[i] = float64(i + 1)    // 1..100
		busy[i] = float64(1000 + i) // all slow
	}
	if got := mixQuantile(idle, busy, 0, 0.99); got != 99 {
		t.Fatalf("d=0: %v, want 99", got)
	}
	if got := mixQuantile(idle, busy, 1, 0.99); got != 1098 {
		t.Fatalf("d=1: %v, want 1098", got)
	}
	if got := mixQuantile(idle, busy, 0.005, 0.99); got >= 1000 {
		t.Fatalf("0.5%% slow requests: p99 %v, want an idle one", got)
	}
	if got := mixQuantile(idle, busy, 0.02, 0.99); got < 1000 {
		t.Fatalf("2%% slow requests: p99 %v, want a slow one", got)
	}
}

// A canary counts as overlapping only when it started inside a recorded
// statement.
func TestSpansOverlap(t *testing.T) {
	var s spans
	t0 := time.Unix(100, 0)
	for i := range 10 {
		from := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		s.add(from, from.Add(5*time.Millisecond))
	}
	last := t0.Add(900 * time.Millisecond)
	for _, c := range []struct {
		at   time.Time
		want bool
	}{
		{last, true},
		{last.Add(4 * time.Millisecond), true},
		{last.Add(5 * time.Millisecond), false},
		{last.Add(-time.Millisecond), false},
		{t0.Add(200 * time.Millisecond), true},
		{t0, false}, // older than the last 8 statements
	} {
		if got := s.overlaps(c.at); got != c.want {
			t.Fatalf("canary at +%s: overlaps %v, want %v", c.at.Sub(t0), got, c.want)
		}
	}
}

// A few harmless overlapping canaries do not vouch for a high duty: at d
// the predicted p99 rests on the overlapping canaries' 1-0.01/d quantile,
// so the duty stays within what tailCanaries beyond it would show, and
// rises as more come in.
func TestLatencyControlNeedsCanariesForAHighDuty(t *testing.T) {
	p := engagedPacer(HealthConfig{})
	f := newFeed(0, 1)
	f.step = canaryWindow / 12 // 13 overlapping canaries in the window, both ends counted
	f.feed(&p.ctl, 200)
	if want := supportedDuty(13); want >= closedLoopMaxDuty {
		t.Fatalf("13 canaries vouch for %v, not below the ceiling %v: the test no longer tests", want, closedLoopMaxDuty)
	}
	if d, want := p.duty(), supportedDuty(13); d > want+1e-9 || d < want/2 {
		t.Fatalf("duty %v on 13 overlapping canaries, want about %v", d, want)
	}
	f.step = canaryWindow / 200
	f.feed(&p.ctl, 200)
	if d := p.duty(); d != closedLoopMaxDuty {
		t.Fatalf("duty %v on 200 overlapping canaries, want the ceiling %v", d, closedLoopMaxDuty)
	}
}

// One more slow idle canary (1 ms among a few hundred around 400 µs) moves
// the prediction at 7% a little, where reading the mixture's p99 off the
// samples jumped by tens of points: the case of session 18's cuts, with
// 7% of the overlapping canaries moderately slower than the idle p99.
func TestPredictedRiseSteadyAgainstOneSlowIdleCanary(t *testing.T) {
	f := newFeed(0, 1)
	idle := make([]float64, 0, 201)
	for range 200 {
		idle = append(idle, float64(f.idle().Microseconds()))
	}
	slices.Sort(idle)
	busy := make([]float64, 0, 100)
	for i := range 100 {
		us := float64(f.idle().Microseconds())
		if i%14 == 0 {
			us = quantile(idle, 0.99) * 1.3 // 8 of 100 over the idle p99
		}
		busy = append(busy, us)
	}
	slices.Sort(busy)
	more := append(slices.Clone(idle), 1000)
	slices.Sort(more)
	const d = 0.07
	raw := math.Abs(MixedP99Rise(more, busy, d) - MixedP99Rise(idle, busy, d))
	fitted := math.Abs(fitIdleTail(more).rise(busy, d) - fitIdleTail(idle).rise(busy, d))
	if fitted > 0.05 {
		t.Fatalf("one slow idle canary moved the prediction at 7%% by %.0f points, want at most 5", 100*fitted)
	}
	if raw <= 2*fitted {
		t.Fatalf("from the samples as they are it moved by %.0f points, fitted by %.0f: the case no longer shows the difference", 100*raw, 100*fitted)
	}
}
