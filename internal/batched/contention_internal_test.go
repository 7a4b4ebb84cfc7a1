package batched

import (
	"math"
	"strings"
	"testing"
	"time"
)

func testPacer() pacer {
	return newPacer(HealthConfig{}.withDefaults())
}

// An idle database (nobody else busy, or one session now and then) is
// never paced.
func TestPacerIdleRunsFlatOut(t *testing.T) {
	for _, samples := range [][]int{nil, {0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 1, 0, 0, 0}} {
		p := testPacer()
		now := time.Unix(0, 0)
		for _, s := range samples {
			now = now.Add(20 * time.Millisecond)
			p.observe(s, s, now)
		}
		if pause, _ := p.pause(100 * time.Millisecond); p.duty() != 1 || pause != 0 || p.paced() || p.signal() != nil {
			t.Fatalf("samples %v: duty %v, load %.2f", samples, p.duty(), p.load)
		}
		if b := p.budget(100 * time.Millisecond); b != 100*time.Millisecond {
			t.Fatalf("samples %v: budget %s", samples, b)
		}
	}
}

// Busy sessions engage the pacing within a few samples; more of them lower
// the duty cycle, never below the floor; pauses follow the duty cycle.
func TestPacerMoreContentionLowerDuty(t *testing.T) {
	h := HealthConfig{}.withDefaults()
	duty := func(busy int) float64 {
		p := newPacer(h)
		for i := range 100 {
			p.observe(busy, busy, time.Unix(0, 0).Add(time.Duration(i)*20*time.Millisecond))
		}
		return p.duty()
	}
	if d := duty(1); d != h.MaxDutyUnderLoad {
		t.Fatalf("one busy session: duty %v, want %v", d, h.MaxDutyUnderLoad)
	}
	prev := 1.0
	for _, busy := range []int{1, 2, 3, 4, 8} {
		d := duty(busy)
		if d >= prev && d > h.MinDutyUnderLoad {
			t.Fatalf("%d busy: duty %v not below %v", busy, d, prev)
		}
		prev = d
	}
	if d := duty(100); d != h.MinDutyUnderLoad {
		t.Fatalf("100 busy: duty %v, want the floor %v", d, h.MinDutyUnderLoad)
	}

	p := newPacer(h)
	n := 0
	for !p.paced() {
		n++
		p.observe(4, 4, time.Unix(0, 0).Add(time.Duration(n)*20*time.Millisecond))
		if n > 3 {
			t.Fatalf("not paced after %d samples of 4 busy sessions (load %.2f)", n, p.load)
		}
	}
	d := p.duty()
	// Statements take a share d of the time: pause = work*(1-d)/d.
	work := p.burstLen(d)
	got, burst := p.pause(work)
	want := time.Duration(float64(work) * (1 - d) / d)
	if got != want || burst != work || float64(work)/float64(work+got) > d+1e-9 {
		t.Fatalf("pause %s after %s at duty %v, want %s", got, work, d, want)
	}
	if got, _ := p.pause(time.Hour); got != maxPacePause {
		t.Fatalf("pause not capped: %s", got)
	}
	if b := p.budget(100 * time.Millisecond); b != loadSubBatchBudget {
		t.Fatalf("paced budget %s", b)
	}
	s := p.signal()
	if s == nil || s.Stop || s.Duty != d || s.Indicator != "contention" || !strings.Contains(s.Reason, "duty cycle") {
		t.Fatalf("signal %+v", s)
	}
}

// When the others go quiet, full speed comes back contentionHold after
// the average fell below the threshold, not at the first quiet sample: a
// gap in the application's traffic does not release a burst into it.
func TestPacerRecoversAfterHold(t *testing.T) {
	p := testPacer()
	now := time.Unix(0, 0)
	step := func(busy int) {
		now = now.Add(100 * time.Millisecond)
		p.observe(busy, busy, now)
	}
	for range 50 {
		step(6)
	}
	if !p.paced() {
		t.Fatal("not paced under load")
	}
	var quiet time.Time
	for p.paced() {
		step(0)
		if p.load < contentionThreshold && p.present < presenceThreshold && quiet.IsZero() {
			quiet = now
		}
		if now.Sub(time.Unix(0, 0)) > time.Minute {
			t.Fatalf("still paced a minute later (load %.3f)", p.load)
		}
	}
	if quiet.IsZero() || now.Sub(quiet) < contentionHold || now.Sub(quiet) > contentionHold+200*time.Millisecond {
		t.Fatalf("full speed %s after the load fell below the threshold, want %s", now.Sub(quiet), contentionHold)
	}
	// One busy sample while quiet does not engage it again, two in a row
	// of a real load do.
	step(1)
	if p.paced() {
		t.Fatalf("paced again by a single busy sample (load %.3f)", p.load)
	}
	step(2)
	if !p.paced() {
		t.Fatalf("not paced by a returning load (load %.3f)", p.load)
	}
}

// MaxDutyUnderLoad >= 1 turns pacing off; the floor never exceeds the cap.
func TestPacerConfig(t *testing.T) {
	p := newPacer(HealthConfig{MaxDutyUnderLoad: 1}.withDefaults())
	for i := range 50 {
		p.observe(10, 10, time.Unix(0, 0).Add(time.Duration(i)*20*time.Millisecond))
	}
	if p.enabled() || p.duty() != 1 {
		t.Fatalf("pacing with MaxDutyUnderLoad 1: duty %v", p.duty())
	}
	h := HealthConfig{MaxDutyUnderLoad: 0.005}.withDefaults()
	if h.MinDutyUnderLoad != 0.005 {
		t.Fatalf("floor %v above the cap", h.MinDutyUnderLoad)
	}
	p = newPacer(h)
	for i := range 50 {
		p.observe(10, 10, time.Unix(0, 0).Add(time.Duration(i)*20*time.Millisecond))
	}
	if p.duty() != 0.005 {
		t.Fatalf("duty %v", p.duty())
	}
}

// A sub-batch that blocked others halves the statement budget, down to a
// floor; sub-batches that block no one let it grow back by a tenth each
// until the cap is gone. The reason names what happened.
func TestPacerBlockingCapsStatements(t *testing.T) {
	const normal = 100 * time.Millisecond
	p := testPacer()
	p.observeBlocked(0, 80*time.Millisecond, normal)
	if p.budget(normal) != normal || p.slowed() || p.signal() != nil {
		t.Fatalf("capped without blocking anyone: budget %s", p.budget(normal))
	}
	p.observeBlocked(2, 80*time.Millisecond, normal)
	if got, want := p.budget(normal), 80*time.Millisecond/blockingCut; got != want {
		t.Fatalf("after blocking 2 sessions in an 80ms statement: budget %s, want %s", got, want)
	}
	p.observeBlocked(1, 80*time.Millisecond, normal)
	if got, want := p.budget(normal), 80*time.Millisecond/blockingCut/blockingCut; got != want {
		t.Fatalf("after blocking again: budget %s, want %s (cut from the cap, not from a longer statement)", got, want)
	}
	for range 20 {
		p.observeBlocked(1, p.budget(normal), normal)
	}
	if got := p.budget(normal); got != minBlockingBudget {
		t.Fatalf("budget %s, want the floor %s", got, minBlockingBudget)
	}
	if p.blocked != 23 {
		t.Fatalf("blocked sessions counted %d, want 23", p.blocked)
	}
	s := p.signal()
	if s == nil || !s.Paced || s.Stop || !strings.Contains(s.Reason, "statements shortened to 2ms") {
		t.Fatalf("signal %+v", s)
	}
	clean := 0
	for p.stmtCap > 0 {
		p.observeBlocked(0, p.budget(normal), normal)
		if clean++; clean > 100 {
			t.Fatal("the cap never went away")
		}
	}
	// 2ms to 100ms growing by 1/blockingRegrow per sub-batch.
	want := math.Log(float64(normal/minBlockingBudget)) / math.Log(1+1.0/blockingRegrow)
	if math.Abs(float64(clean)-want) > want/10 {
		t.Fatalf("cap gone after %d clean sub-batches, want about %.0f", clean, want)
	}
	if p.budget(normal) != normal || p.signal() != nil {
		t.Fatalf("budget %s after the cap went away", p.budget(normal))
	}
}

// While paced, statements have loadSubBatchBudget: the cap regrows to
// that and goes, and `bbm show` never calls statements "shortened" to
// more than they are allowed anyway.
func TestPacerBlockingCapWhilePaced(t *testing.T) {
	const normal = 100 * time.Millisecond
	p := engagedPacer(HealthConfig{})
	if !p.paced() {
		t.Fatal("not paced")
	}
	p.observeBlocked(1, loadSubBatchBudget, normal)
	if got, want := p.budget(normal), loadSubBatchBudget/blockingCut; got != want {
		t.Fatalf("budget %s, want %s", got, want)
	}
	clean := 0
	for p.stmtCap > 0 {
		if p.stmtCap >= loadSubBatchBudget {
			t.Fatalf("cap %s, not below the paced budget %s: it caps nothing", p.stmtCap, loadSubBatchBudget)
		}
		p.observeBlocked(0, p.budget(normal), normal)
		if clean++; clean > 100 {
			t.Fatal("the cap never went away")
		}
	}
	if s := p.signal(); s == nil || strings.Contains(s.Reason, "shortened") {
		t.Fatalf("signal %+v after the cap went away", s)
	}
	if p.budget(normal) != loadSubBatchBudget {
		t.Fatalf("budget %s", p.budget(normal))
	}
}

// An application of many short requests is rarely caught mid-statement,
// but its connections are always within 100 ms of one: that presence
// engages the pacing too. One session that ran a statement a moment ago,
// now and then, does not.
func TestPacerPresenceOfShortRequests(t *testing.T) {
	now := time.Unix(0, 0)
	p := testPacer()
	for i := range 10 {
		now = now.Add(20 * time.Millisecond)
		p.observe(0, i%5/4, now) // one recent session in one sample of five
	}
	if p.paced() {
		t.Fatalf("paced by an occasional session (presence %.2f)", p.present)
	}
	for range 5 {
		now = now.Add(20 * time.Millisecond)
		p.observe(0, 6, now) // six connections, none caught mid-statement
	}
	if !p.paced() || p.duty() != p.maxDuty {
		t.Fatalf("not paced by an application's connections: duty %v, presence %.2f", p.duty(), p.present)
	}
}

// Paced sub-batches run back to back until their statements add up to a
// burst, then pause for the whole burst's share: the same duty in fewer,
// longer stretches (a just-woken sub-batch is what hurts others, see
// pacedBurst). A burst is the duty's share of pacedCycle, at least one
// statement, at most pacedBurst; PaceBurst < 0 pauses after every one.
func TestPacerBursts(t *testing.T) {
	for _, tc := range []struct {
		duty  float64
		burst time.Duration
	}{{0.002, loadSubBatchBudget}, {0.02, 40 * time.Millisecond}, {0.05, 100 * time.Millisecond}, {0.2, pacedBurst}} {
		p := testPacer()
		p.engaged, p.maxDuty, p.minDuty = true, tc.duty, tc.duty
		p.ctl = latencyControl{}
		if got := p.burstLen(p.duty()); got != tc.burst {
			t.Fatalf("duty %v: burst %s, want %s", tc.duty, got, tc.burst)
		}
		work := 3 * time.Millisecond
		var ran time.Duration
		for ran+work < tc.burst {
			ran += work
			if pause, burst := p.pause(work); pause != 0 || burst != 0 {
				t.Fatalf("duty %v: paused %s after %s of a %s burst", tc.duty, pause, ran, tc.burst)
			}
		}
		ran += work
		pause, burst := p.pause(work)
		if want := min(time.Duration(float64(ran)*(1-tc.duty)/tc.duty), maxPacePause); burst != ran || pause != want {
			t.Fatalf("duty %v: after %s of statements pause %s for %s, want %s for %s", tc.duty, ran, pause, burst, want, ran)
		}
		if pause, _ := p.pause(work); pause != 0 {
			t.Fatalf("duty %v: the next burst paused at once (%s)", tc.duty, pause)
		}
	}

	h := HealthConfig{PaceBurst: -1}.withDefaults()
	p := newPacer(h)
	p.engaged, p.ctl = true, latencyControl{}
	if pause, burst := p.pause(time.Millisecond); burst != time.Millisecond || pause <= 0 {
		t.Fatalf("PaceBurst < 0: pause %s for %s after one sub-batch, want a pause for it", pause, burst)
	}

	// A burst cut short by the others going quiet does not carry over
	// into the next time the database is busy.
	p = testPacer()
	p.engaged, p.ctl = true, latencyControl{}
	p.pause(5 * time.Millisecond)
	p.engaged = false
	if pause, _ := p.pause(5 * time.Millisecond); pause != 0 || p.burst != 0 {
		t.Fatalf("unpaced: pause %s, burst kept %s", pause, p.burst)
	}
}

// At the lowest default duty one paced statement is a whole burst, and its
// pause must fit under maxPacePause, or the lowest duty is not reached (with
// 20 ms statements a 2 s cap made 0.5% into 1%).
func TestPacerLowestDutyFitsOneStatement(t *testing.T) {
	p := testPacer()
	p.engaged, p.ctl = true, latencyControl{}
	p.maxDuty, p.minDuty = defaultMinDutyUnderLoad, defaultMinDutyUnderLoad
	d := p.duty()
	if d != defaultMinDutyUnderLoad || p.burstLen(d) != loadSubBatchBudget {
		t.Fatalf("duty %v, burst %s", d, p.burstLen(d))
	}
	pause, burst := p.pause(loadSubBatchBudget)
	if got := float64(burst) / float64(burst+pause); burst != loadSubBatchBudget || got > d+1e-9 {
		t.Fatalf("one %s statement then a %s pause: a share of %.4f, want %v", burst, pause, got, d)
	}
}
