package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// finalizeBar draws the progress of `ferry bbm finalize`.
//
// The rate and the ETA are computed here rather than by the progress bar
// library: the library counts its first Set as rows done since the bar
// started, so the rows a migration had done before finalize began showed
// up as an absurd rate (16317107093 rows/s) for the first ten samples and
// in the average at the end. Only rows done during this run count here.
//
// On success the bar ends at 100% with the real row count; on a failure or
// an interrupt it stays at the real count, never at 100%.
type finalizeBar struct {
	w      io.Writer
	bar    *progressbar.ProgressBar
	desc   string
	unit   string // what is counted: "rows" unless set
	total  int64  // total_tuple_count, an estimate; 0 when unknown
	barMax int64  // the bar's max; -1 when the total is unknown
	rows   int64  // last count drawn
	start  rateSample
	meter  rateMeter
}

// finalizeRateWindow is how far back the rate looks, and
// finalizeMinRateSpan how much time it needs before it is shown.
const (
	finalizeRateWindow  = 10 * time.Second
	finalizeMinRateSpan = time.Second
)

func newFinalizeBar(w io.Writer, desc string, total, rows int64, now time.Time) *finalizeBar {
	b := &finalizeBar{w: w, desc: desc, unit: "rows", barMax: -1, rows: rows, start: rateSample{now, rows},
		meter: rateMeter{window: finalizeRateWindow}}
	if total > 0 {
		b.total = total
		b.barMax = max(total, rows+1)
	}
	b.meter.add(now, rows)
	b.bar = progressbar.NewOptions64(b.barMax, progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc), progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(false),
		// No spinner goroutine (unknown totals): it would go on drawing
		// after a failure, over the error message.
		progressbar.OptionSetSpinnerChangeInterval(0),
		// Not full width: with the rate after it, a full-width bar had no
		// room left on an 80-column terminal. The library narrows this
		// one to fit the terminal.
		progressbar.OptionSetWidth(30))
	_ = b.bar.Set64(rows)
	return b
}

// update draws rows done at now. Callers pace it (every 300ms), so the
// library's throttle is not used and every update is drawn.
func (b *finalizeBar) update(rows int64, now time.Time) {
	b.rows = rows
	b.meter.add(now, rows)
	if b.barMax > 0 && rows >= b.barMax {
		// The total is an estimate. A bar at its max counts as finished
		// and draws nothing more, at 100% of an unfinished migration.
		b.barMax = rows + rows/100 + 1
		b.bar.ChangeMax64(b.barMax)
	}
	desc := b.desc
	if s := rateETA(&b.meter, b.unit, b.total, rows); s != "" {
		desc += ":" + s[1:] // ": R rows/s, ETA D"
	}
	_ = b.bar.Set64(rows)
	b.bar.Describe(desc) // draws again, with the rate
}

// end draws the final state and ends the line. rows < 0: unknown, keep
// the last count. finished: the migration is done (100%); otherwise the
// bar stays where the migration really is.
func (b *finalizeBar) end(rows int64, finished bool, now time.Time) {
	if rows < 0 {
		rows = b.rows
	}
	if !finished {
		b.update(rows, now)
		_ = b.bar.Exit()
		fmt.Fprintln(b.w)
		return
	}
	desc := b.desc
	if d := now.Sub(b.start.at); rows > b.start.rows && d > 0 {
		desc += fmt.Sprintf(": %.0f %s/s", float64(rows-b.start.rows)/d.Seconds(), b.unit)
	}
	b.bar.Describe(desc)
	if b.barMax > 0 && rows > 0 {
		// 100% with the real count, not the estimate.
		b.bar.ChangeMax64(rows)
		_ = b.bar.Set64(rows)
	} else {
		_ = b.bar.Set64(rows) // Finish does not update an unknown total's count
		_ = b.bar.Finish()
	}
	fmt.Fprintln(b.w)
}

// rateMeter measures rows/s over a sliding window of samples.
type rateMeter struct {
	window  time.Duration
	samples []rateSample
}

type rateSample struct {
	at   time.Time
	rows int64
}

func (m *rateMeter) add(at time.Time, rows int64) {
	m.samples = append(m.samples, rateSample{at, rows})
	// Drop the oldest while the next one alone still spans the window.
	for len(m.samples) > 2 && at.Sub(m.samples[1].at) >= m.window {
		m.samples = m.samples[1:]
	}
}

// rate is rows/s between the oldest and the newest sample; ok is false
// until they are minSpan apart, as a rate over a few milliseconds means
// nothing.
func (m *rateMeter) rate(minSpan time.Duration) (float64, bool) {
	if len(m.samples) < 2 {
		return 0, false
	}
	first, last := m.samples[0], m.samples[len(m.samples)-1]
	d := last.at.Sub(first.at)
	if d < minSpan || d <= 0 {
		return 0, false
	}
	return float64(max(0, last.rows-first.rows)) / d.Seconds(), true
}
