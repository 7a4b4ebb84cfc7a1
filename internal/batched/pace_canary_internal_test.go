package batched

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// The canary runs its tiny transactions on a connection of its own when
// asked, each counted as overlapping a statement or not by when it
// started (a Tracer hears of each alike), and gives the connection back
// when stopped. With every
// connection of the pool taken it does not start (the batch paces
// open-loop).
func TestCanaryMeasuresAndReleases(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)

	c, err := startCanary(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	// A statement that lasts the whole test: every canary overlaps it.
	var during spans
	during.add(time.Now().Add(-time.Second), time.Now().Add(time.Hour))
	ctl := newLatencyControl(HealthConfig{}.withDefaults())
	var heard canaryLog
	c.fire(time.Now(), time.Millisecond, 3)
	got := 0
	testenv.Eventually(t, 30*time.Second, "three canaries", func() bool {
		n, ok := c.collect(&ctl, &during, &heard)
		if !ok {
			t.Fatal("canary failed")
		}
		got += n
		return got >= 3
	})
	if ctl.busy.n != 3 || ctl.idle.n != 0 {
		t.Fatalf("%d overlapping and %d idle canaries, want 3 and 0", ctl.busy.n, ctl.idle.n)
	}
	if len(heard) != 3 {
		t.Fatalf("the tracer heard %+v, want the three overlapping canaries", heard)
	}
	for _, h := range heard {
		if !h.overlap || h.lat <= 0 {
			t.Fatalf("the tracer heard %+v, want the three overlapping canaries, each timed", heard)
		}
	}
	// After the statement: idle.
	var none spans
	c.fire(time.Now(), 0, 1)
	testenv.Eventually(t, 30*time.Second, "an idle canary", func() bool {
		_, _ = c.collect(&ctl, &none, &heard)
		return ctl.idle.n == 1
	})
	if len(heard) != 4 || heard[3].overlap {
		t.Fatalf("the tracer heard %+v, want an idle canary last", heard)
	}
	c.stop()
	if st := pool.Stat(); st.AcquiredConns() != 0 {
		t.Fatalf("%d connections still taken after stop", st.AcquiredConns())
	}

	// Every connection taken: no canary, at once.
	for range pool.Stat().MaxConns() {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
	}
	if _, err := startCanary(ctx, pool); !errors.Is(err, errNoCanaryConn) {
		t.Fatalf("with the pool exhausted: %v, want errNoCanaryConn", err)
	}
}

// canaryLog is a Tracer that keeps the canaries it hears of.
type canaryLog []heardCanary

type heardCanary struct {
	lat     time.Duration
	overlap bool
}

func (l *canaryLog) Statement(from, to time.Time) {}

func (l *canaryLog) Canary(at time.Time, lat time.Duration, overlap bool) {
	*l = append(*l, heardCanary{lat, overlap})
}
