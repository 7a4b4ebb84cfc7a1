package bbm

import (
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
		for _, s := range samples {
			p.observe(s)
		}
		if d := p.duty(); d != 1 || p.pause(100*time.Millisecond) != 0 || p.paced() || p.signal() != nil {
			t.Fatalf("samples %v: duty %v, load %.2f", samples, d, p.load)
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
		for range 20 {
			p.observe(busy)
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
		p.observe(4)
		if n++; n > 3 {
			t.Fatalf("not paced after %d samples of 4 busy sessions (load %.2f)", n, p.load)
		}
	}
	d := p.duty()
	// Statements take a share d of the time: pause = work*(1-d)/d.
	work := 40 * time.Millisecond
	got := p.pause(work)
	want := time.Duration(float64(work) * (1 - d) / d)
	if got != want || float64(work)/float64(work+got) > d+1e-9 {
		t.Fatalf("pause %s after %s at duty %v, want %s", got, work, d, want)
	}
	if p.pause(time.Hour) != maxPacePause {
		t.Fatalf("pause not capped: %s", p.pause(time.Hour))
	}
	if b := p.budget(100 * time.Millisecond); b != loadSubBatchBudget {
		t.Fatalf("paced budget %s", b)
	}
	s := p.signal()
	if s == nil || s.Stop || s.Duty != d || s.Indicator != "contention" || !strings.Contains(s.Reason, "duty cycle") {
		t.Fatalf("signal %+v", s)
	}
}

// When the others go quiet, full speed comes back within a few samples.
func TestPacerRecoversQuickly(t *testing.T) {
	p := testPacer()
	for range 50 {
		p.observe(6)
	}
	if !p.paced() {
		t.Fatal("not paced under load")
	}
	n := 0
	for p.paced() {
		p.observe(0)
		if n++; n > 8 {
			t.Fatalf("still paced after %d idle samples (load %.2f)", n, p.load)
		}
	}
}

// MaxDutyUnderLoad >= 1 turns pacing off; the floor never exceeds the cap.
func TestPacerConfig(t *testing.T) {
	p := newPacer(HealthConfig{MaxDutyUnderLoad: 1}.withDefaults())
	for range 20 {
		p.observe(10)
	}
	if p.enabled() || p.duty() != 1 {
		t.Fatalf("pacing with MaxDutyUnderLoad 1: duty %v", p.duty())
	}
	h := HealthConfig{MaxDutyUnderLoad: 0.05}.withDefaults()
	if h.MinDutyUnderLoad != 0.05 {
		t.Fatalf("floor %v above the cap", h.MinDutyUnderLoad)
	}
	p = newPacer(h)
	for range 20 {
		p.observe(10)
	}
	if p.duty() != 0.05 {
		t.Fatalf("duty %v", p.duty())
	}
}
