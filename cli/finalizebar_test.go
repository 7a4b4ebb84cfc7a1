package cli

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lastDrawn is the bar as a terminal shows it last: the last non-blank
// segment between carriage returns.
func lastDrawn(s string) string {
	segs := strings.Split(s, "\r")
	for i := len(segs) - 1; i >= 0; i-- {
		if t := strings.TrimSpace(segs[i]); t != "" {
			return t
		}
	}
	return ""
}

var ratesRe = regexp.MustCompile(`(\d+) rows/s`)

// rates are all the rows/s values drawn.
func rates(t *testing.T, s string) []float64 {
	t.Helper()
	var out []float64
	for _, m := range ratesRe.FindAllStringSubmatch(s, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// Rows done before finalize started are where the bar starts, not a burst
// of throughput: the first draws show no rate, and the rate is that of
// this run (it used to be 16317107093 rows/s on the first tick).
func TestFinalizeBarRateCountsOnlyThisRun(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	t0 := time.Now()
	b := newFinalizeBar(&w, "Copy events.id", 150000, 100000, t0)
	b.update(100500, t0.Add(300*time.Millisecond))
	b.update(101000, t0.Add(600*time.Millisecond))
	if got := rates(t, w.String()); len(got) != 0 {
		t.Fatalf("a rate over less than %s: %v in %q", finalizeMinRateSpan, got, w.String())
	}
	if d := lastDrawn(w.String()); !strings.Contains(d, "(101000/150000)") || !strings.HasPrefix(d, "67%") {
		t.Fatalf("drawn %q", d)
	}
	b.update(102000, t0.Add(time.Second))
	b.update(104000, t0.Add(2*time.Second))
	d := lastDrawn(w.String())
	// 4000 rows in 2s; 46000 rows left at 2000 rows/s.
	if !strings.Contains(d, "2000 rows/s, ETA 23s") || !strings.Contains(d, "(104000/150000)") {
		t.Fatalf("drawn %q", d)
	}
	// The window slides: only the last 10 seconds count.
	for i := 3; i <= 20; i++ {
		b.update(104000+int64(i-2)*500, t0.Add(time.Duration(i)*time.Second))
	}
	if d := lastDrawn(w.String()); !strings.Contains(d, " 500 rows/s") {
		t.Fatalf("after a slowdown: %q", d)
	}
	w.Reset()
	b.end(113000, true, t0.Add(20*time.Second))
	d = lastDrawn(w.String())
	// 13000 rows in 20s; the real count, not the estimate.
	if !strings.HasPrefix(d, "100%") || !strings.Contains(d, "(113000/113000)") || !strings.Contains(d, "650 rows/s") || !strings.HasSuffix(w.String(), "\n") {
		t.Fatalf("finished: %q", d)
	}
}

// A finalize that fails or is interrupted leaves the bar at the rows
// really done; it used to be drawn at 100%.
func TestFinalizeBarFailureKeepsRealCount(t *testing.T) {
	t.Parallel()
	for _, rows := range []int64{-1, 24000} {
		var w bytes.Buffer
		t0 := time.Now()
		b := newFinalizeBar(&w, "Copy events.id", 150000, 0, t0)
		b.update(12000, t0.Add(time.Second))
		b.update(24000, t0.Add(2*time.Second))
		b.end(rows, false, t0.Add(3*time.Second)) // -1: the last Get failed
		d := lastDrawn(w.String())
		if strings.Contains(w.String(), "100%") || !strings.HasPrefix(d, "16%") || !strings.Contains(d, "(24000/150000)") || !strings.HasSuffix(w.String(), "\n") {
			t.Fatalf("rows %d: drawn %q (all: %q)", rows, d, w.String())
		}
		if got := rates(t, w.String()); len(got) == 0 || got[len(got)-1] > 12000 {
			t.Fatalf("rows %d: rates %v", rows, got)
		}
	}
}

// total_tuple_count is an estimate: reaching it before the migration is
// done must not draw 100% (the library then stops drawing), and with no
// estimate at all the count is still shown.
func TestFinalizeBarEstimateTooLowOrUnknown(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	t0 := time.Now()
	b := newFinalizeBar(&w, "Copy events.id", 1000, 0, t0)
	b.update(1500, t0.Add(time.Second))
	if d := lastDrawn(w.String()); strings.HasPrefix(d, "100%") || !strings.Contains(d, "(1500/") {
		t.Fatalf("past the estimate: %q", d)
	}
	b.update(1800, t0.Add(2*time.Second))
	if d := lastDrawn(w.String()); !strings.Contains(d, "(1800/") {
		t.Fatalf("still drawing past the estimate: %q", d)
	}
	b.end(1800, false, t0.Add(3*time.Second))
	if strings.Contains(w.String(), "100%") {
		t.Fatalf("failed past the estimate drawn at 100%%: %q", w.String())
	}

	w.Reset()
	u := newFinalizeBar(&w, "Copy events.id", 0, 500, t0)
	u.update(1500, t0.Add(2*time.Second))
	if d := lastDrawn(w.String()); !strings.Contains(d, "1500") || !strings.Contains(d, "500 rows/s") {
		t.Fatalf("unknown total: %q", d)
	}
	u.end(1500, false, t0.Add(3*time.Second))
	if d := lastDrawn(w.String()); !strings.Contains(d, "1500") {
		t.Fatalf("unknown total, failed: %q", d)
	}
}
