package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Long work (bbm finalize, db migrate --finalize, db backup, db restore,
// the demo) shows progress: a bar with rate and ETA on a terminal, and a
// plain line every plainEvery otherwise (a pipe, a log file, CI), where a
// bar's carriage-return frames are noise. --progress picks one by hand.

// progress modes (--progress).
const (
	progressAuto  = "auto"
	progressBar   = "bar"
	progressLines = "lines"
	progressNone  = "none"
)

// plainEvery is how often a plain progress line is printed.
const plainEvery = 5 * time.Second

// progress reports rows done.
type progress interface {
	update(rows int64, now time.Time)
	// end draws the final state; finished: the work is complete.
	end(rows int64, finished bool, now time.Time)
}

// checkProgressFlag validates --progress.
func (a *App) checkProgressFlag() error {
	switch a.progressMode {
	case progressAuto, progressBar, progressLines, progressNone:
		return nil
	}
	return Usagef("--progress must be auto, bar, lines or none, got %q", a.progressMode)
}

// newProgress starts reporting on stderr the progress of desc, counted in
// unit ("rows", "tables"): total (0: unknown), rows0 of them done before.
// It returns nil with --progress none.
func (a *App) newProgress(desc, unit string, total, rows0 int64, now time.Time) progress {
	return a.startProgress(desc, unit, total, rows0, now, false)
}

// newQuietProgress is newProgress whose plain lines start only after
// plainEvery: short work prints nothing, and an early error stays the
// first line of stderr, where scripts read it.
func (a *App) newQuietProgress(desc, unit string, total, rows0 int64, now time.Time) progress {
	return a.startProgress(desc, unit, total, rows0, now, true)
}

func (a *App) startProgress(desc, unit string, total, rows0 int64, now time.Time, quiet bool) progress {
	mode := a.progressMode
	if mode == progressAuto || mode == "" {
		mode = progressLines
		if isTerminal(a.Err) {
			mode = progressBar
		}
	}
	switch mode {
	case progressBar:
		b := newFinalizeBar(a.errOut.w, desc, total, rows0, now)
		b.unit = unit
		a.errOut.show(b)
		return &guardedBar{g: a.errOut, b: b}
	case progressLines:
		if quiet {
			return &plainProgress{w: a.errOut, desc: desc, unit: unit, total: total, start: rateSample{now, rows0},
				meter: rateMeter{window: finalizeRateWindow}, last: now, silent: true}
		}
		return newPlainProgress(a.errOut, desc, unit, total, rows0, now)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// stderrGuard is stderr as the logger sees it: while a bar is drawn, a
// log line clears the bar, is written, and the bar is drawn again below
// it, so logs never break into a bar.
type stderrGuard struct {
	mu  sync.Mutex
	w   io.Writer
	bar *finalizeBar // drawn on w now; nil when none
}

func (g *stderrGuard) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bar == nil {
		return g.w.Write(p)
	}
	_ = g.bar.bar.Clear()
	n, err := g.w.Write(p)
	_ = g.bar.bar.RenderBlank()
	return n, err
}

func (g *stderrGuard) show(b *finalizeBar) {
	g.mu.Lock()
	g.bar = b
	g.mu.Unlock()
}

// guardedBar draws a finalizeBar under its stderrGuard's lock.
type guardedBar struct {
	g *stderrGuard
	b *finalizeBar
}

func (p *guardedBar) update(rows int64, now time.Time) {
	p.g.mu.Lock()
	defer p.g.mu.Unlock()
	p.b.update(rows, now)
}

func (p *guardedBar) end(rows int64, finished bool, now time.Time) {
	p.g.mu.Lock()
	defer p.g.mu.Unlock()
	p.b.end(rows, finished, now)
	p.g.bar = nil
}

// plainProgress prints a line every plainEvery: where it is, the rate
// and the ETA.
type plainProgress struct {
	w     io.Writer
	desc  string
	unit  string
	total int64
	start rateSample
	meter rateMeter
	last  time.Time
	// silent: nothing printed yet (newQuietProgress); the end is printed
	// only when a line was.
	silent bool
}

func newPlainProgress(w io.Writer, desc, unit string, total, rows0 int64, now time.Time) *plainProgress {
	p := &plainProgress{w: w, desc: desc, unit: unit, total: total, start: rateSample{now, rows0}, meter: rateMeter{window: finalizeRateWindow}, last: now}
	p.meter.add(now, rows0)
	fmt.Fprintf(p.w, "%s: started at %s\n", p.desc, p.count(rows0))
	return p
}

func (p *plainProgress) count(rows int64) string {
	if p.total <= 0 {
		return fmt.Sprintf("%d %s", rows, p.unit)
	}
	return fmt.Sprintf("%d/%d %s (%.1f%%)", rows, p.total, p.unit, 100*float64(rows)/float64(p.total))
}

func (p *plainProgress) update(rows int64, now time.Time) {
	p.meter.add(now, rows)
	if now.Sub(p.last) < plainEvery {
		return
	}
	p.last, p.silent = now, false
	fmt.Fprintf(p.w, "%s: %s%s\n", p.desc, p.count(rows), rateETA(&p.meter, p.unit, p.total, rows))
}

func (p *plainProgress) end(rows int64, finished bool, now time.Time) {
	if p.silent {
		return
	}
	if rows < 0 {
		rows = p.start.rows
		if n := len(p.meter.samples); n > 0 {
			rows = p.meter.samples[n-1].rows
		}
	}
	d := now.Sub(p.start.at)
	if !finished {
		fmt.Fprintf(p.w, "%s: stopped at %s after %s\n", p.desc, p.count(rows), d.Round(time.Second))
		return
	}
	rate := ""
	if d > 0 && rows > p.start.rows {
		rate = fmt.Sprintf(" (%.0f %s/s)", float64(rows-p.start.rows)/d.Seconds(), p.unit)
	}
	fmt.Fprintf(p.w, "%s: done, %d %s in %s%s\n", p.desc, rows, p.unit, d.Round(time.Second), rate)
}

// rateETA is ", R units/s, ETA D" once the meter has a rate ("" before).
func rateETA(m *rateMeter, unit string, total, rows int64) string {
	r, ok := m.rate(finalizeMinRateSpan)
	if !ok {
		return ""
	}
	s := fmt.Sprintf(", %.0f %s/s", r, unit)
	if r > 0 && total > rows {
		s += ", ETA " + (time.Duration(float64(total-rows) / r * float64(time.Second))).Round(time.Second).String()
	}
	return s
}

// tableProgress reports the progress of db backup and restore, which
// count tables: report starts it at the first call; end draws the final
// state. report is nil with --progress none.
func (a *App) tableProgress(desc string) (report func(done, total int64), end func(finished bool)) {
	if a.progressMode == progressNone {
		return nil, func(bool) {}
	}
	var p progress
	var last, total int64
	report = func(done, n int64) {
		now := time.Now()
		if p == nil {
			p = a.newProgress(desc, "tables", n, done, now)
		}
		last, total = done, n
		p.update(done, now)
	}
	end = func(finished bool) {
		if p == nil {
			return
		}
		if finished {
			last = total
		}
		p.end(last, finished, time.Now())
	}
	return report, end
}
