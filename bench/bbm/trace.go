package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
)

// trace records the engine's sub-batch statements and pacing canaries
// (batched.Tracer), to set them beside the load's own latencies: which of
// the load's transactions were due while a statement ran, how much slower
// those were, and whether the canaries saw as much.
type trace struct {
	mu       sync.Mutex
	stmts    []span
	canaries []shot
}

type span struct{ from, to time.Time }

type shot struct {
	at      time.Time
	lat     time.Duration
	overlap bool
}

func (t *trace) Statement(from, to time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stmts = append(t.stmts, span{from, to})
}

func (t *trace) Canary(at time.Time, lat time.Duration, overlap bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.canaries = append(t.canaries, shot{at, lat, overlap})
}

// dump writes the statements, the canaries and the load's transactions
// as CSV, times in microseconds from the first statement's start, for
// looking at single decisions (which canaries a cut rested on) outside
// the bench: "statement,start,duration", "canary,sent,latency,overlap",
// "load,due,latency".
func (t *trace) dump(path string, txns []txn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.stmts) == 0 {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	t0 := slices.MinFunc(t.stmts, func(a, b span) int { return a.from.Compare(b.from) }).from
	us := func(at time.Time) int64 { return at.Sub(t0).Microseconds() }
	for _, s := range t.stmts {
		fmt.Fprintf(w, "statement,%d,%d\n", us(s.from), s.to.Sub(s.from).Microseconds())
	}
	for _, c := range t.canaries {
		fmt.Fprintf(w, "canary,%d,%d,%t\n", us(c.at), c.lat.Microseconds(), c.overlap)
	}
	for _, x := range txns {
		fmt.Fprintf(w, "load,%d,%d\n", us(x.due), x.d.Microseconds())
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// reset forgets what was recorded.
func (t *trace) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stmts, t.canaries = nil, nil
}

// last is the statement that started last at or before t (stmts sorted
// by start), and false when none did.
func last(stmts []span, t time.Time) (span, bool) {
	i, found := slices.BinarySearchFunc(stmts, t, func(s span, t time.Time) int { return s.from.Compare(t) })
	switch {
	case found:
		return stmts[i], true
	case i == 0:
		return span{}, false
	}
	return stmts[i-1], true
}

// holds reports whether t, not before s started, fell inside s.
func (s span) holds(t time.Time) bool { return s.from.Equal(t) || t.Before(s.to) }

// during reports whether t fell inside a statement (stmts sorted by start).
func during(stmts []span, t time.Time) bool {
	s, ok := last(stmts, t)
	return ok && s.holds(t)
}

// afterBuckets split the time since the last statement ended.
var afterBuckets = []struct {
	name     string
	from, to time.Duration
}{
	{"  of them up to 20 ms after one:", 0, 20 * time.Millisecond},
	{"  20-200 ms after one:", 20 * time.Millisecond, 200 * time.Millisecond},
	{"  over 200 ms after one:", 200 * time.Millisecond, time.Hour},
}

// after is how long after the end of the last statement t is, and false
// while a statement runs (or before the first).
func after(stmts []span, t time.Time) (time.Duration, bool) {
	s, ok := last(stmts, t)
	if !ok || s.holds(t) {
		return 0, false
	}
	return t.Sub(s.to), true
}

// rowsAfter prints a row per afterBuckets of the items of v that of
// keeps, by how long after the last statement each was (at).
func rowsAfter[T any](stmts []span, v []T, of func(T) (at time.Time, lat time.Duration, keep bool)) {
	for _, b := range afterBuckets {
		_, in := split(v, func(x T) (time.Duration, bool, bool) {
			at, lat, keep := of(x)
			a, ok := after(stmts, at)
			return lat, false, keep && ok && a >= b.from && a < b.to
		})
		row(b.name, in)
	}
}

// report prints, for the load's transactions due while the migration ran,
// those due during a statement against the rest, the canaries likewise,
// and at a few duties the p99 rise each predicts when mixed as the
// controller mixes them (batched.MixedP99Rise).
func (t *trace) report(txns []txn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	stmts := slices.Clone(t.stmts)
	slices.SortFunc(stmts, func(a, b span) int { return a.from.Compare(b.from) })
	if len(stmts) == 0 {
		fmt.Println("trace: no sub-batch statements recorded")
		return
	}
	var work time.Duration
	for _, s := range stmts {
		work += s.to.Sub(s.from)
	}
	from, to := stmts[0].from, stmts[len(stmts)-1].to
	fmt.Printf("trace: %d statements, %.1f%% of the %s from the first to the last\n", len(stmts), 100*work.Seconds()/to.Sub(from).Seconds(), to.Sub(from).Round(time.Second))
	// The load's transactions due from the first statement to the last,
	// and the canaries, each split by whether a statement was running.
	loadBusy, loadIdle := split(txns, func(x txn) (time.Duration, bool, bool) {
		in := !x.due.Before(from) && !x.due.After(to)
		return x.d, in && during(stmts, x.due), in
	})
	canBusy, canIdle := split(t.canaries, func(c shot) (time.Duration, bool, bool) { return c.lat, c.overlap, true })
	row("load, due during a statement:", loadBusy)
	row("load, due between statements:", loadIdle)
	// The requests between statements by how long after the last one
	// ended they were due: what the migration leaves behind (WAL to
	// flush, pages to prune, dead index entries) shows right after a
	// statement or a burst; what the machine does anyway is spread out.
	rowsAfter(stmts, txns, func(x txn) (time.Time, time.Duration, bool) {
		return x.due, x.d, !x.due.Before(from) && !x.due.After(to)
	})
	row("canaries during a statement:", canBusy)
	row("canaries between statements:", canIdle)
	rowsAfter(stmts, t.canaries, func(c shot) (time.Time, time.Duration, bool) { return c.at, c.lat, !c.overlap })
	// Above the p99 of those between statements, which the migration
	// may have raised too (its WAL, dirty pages and dead rows).
	fmt.Printf("trace: p99 rise mixed at duty d over the p99 between statements, the load's own:%s\n", mixes(loadIdle, loadBusy))
	fmt.Printf("trace: the same from the canaries:%s\n", mixes(canIdle, canBusy))
}

// split sorts the latencies (µs) of the items of v that of keeps into
// those that ran during a statement (busy) and the rest.
func split[T any](v []T, of func(T) (lat time.Duration, busy, keep bool)) (busy, idle []float64) {
	for _, x := range v {
		lat, b, keep := of(x)
		switch us := float64(lat.Microseconds()); {
		case !keep:
		case b:
			busy = append(busy, us)
		default:
			idle = append(idle, us)
		}
	}
	slices.Sort(busy)
	slices.Sort(idle)
	return busy, idle
}

// row prints one group's quantiles and how many took over 0.5, 1, 2 ms.
func row(name string, v []float64) {
	if len(v) == 0 {
		fmt.Printf("trace: %-32s none\n", name)
		return
	}
	fmt.Printf("trace: %-32s %6d, p50 %5.0fµs, p90 %5.0fµs, p99 %6.0fµs; over 0.5/1/2 ms: %5.1f%% %5.1f%% %5.1f%%\n", name, len(v),
		q(v, 0.5), q(v, 0.9), q(v, 0.99), 100*over(v, 500), 100*over(v, 1000), 100*over(v, 2000))
}

// mixes is the p99 rise at a few duties of idle mixed with busy (sorted).
func mixes(idle, busy []float64) string {
	if len(idle) == 0 || len(busy) == 0 {
		return " -"
	}
	out := ""
	for _, d := range []float64{0.02, 0.04, 0.06, 0.08, 0.1} {
		out += fmt.Sprintf(" %.0f%%: %+.0f%%;", 100*d, 100*batched.MixedP99Rise(idle, busy, d))
	}
	return out
}

// q is the f quantile of sorted v (nearest rank).
func q(v []float64, f float64) float64 {
	return v[min(len(v)-1, max(0, int(math.Ceil(float64(len(v))*f))-1))]
}

// over is the share of sorted v above x; v holds whole microseconds, so
// x+0.5 falls between values.
func over(v []float64, x float64) float64 {
	i, _ := slices.BinarySearch(v, x+0.5)
	return 1 - float64(i)/float64(len(v))
}
