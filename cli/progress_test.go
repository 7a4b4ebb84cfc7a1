package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// Not a terminal: a plain line at the start, every plainEvery, and at the
// end; never a carriage return.
func TestPlainProgressLines(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	t0 := time.Now()
	p := newPlainProgress(&w, "Copy events.id", "rows", 100000, 10000, t0)
	for i := 1; i <= 20; i++ { // every 500ms for 10s, 1000 rows/s
		p.update(10000+int64(i)*500, t0.Add(time.Duration(i)*500*time.Millisecond))
	}
	p.end(20000, true, t0.Add(10*time.Second))
	got := w.String()
	want := "Copy events.id: started at 10000/100000 rows (10.0%)\n" +
		"Copy events.id: 15000/100000 rows (15.0%), 1000 rows/s, ETA 1m25s\n" +
		"Copy events.id: 20000/100000 rows (20.0%), 1000 rows/s, ETA 1m20s\n" +
		"Copy events.id: done, 20000 rows in 10s (1000 rows/s)\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	w.Reset()
	p = newPlainProgress(&w, "x", "rows", 0, 0, t0)
	p.end(-1, false, t0.Add(3*time.Second))
	if !strings.HasSuffix(w.String(), "x: stopped at 0 rows after 3s\n") {
		t.Fatalf("%q", w.String())
	}
}

// A log line written while a bar is drawn clears the bar first and draws
// it again after, so the log line starts at the start of a line and the
// bar stays the last thing on the screen.
func TestLogLinesDoNotBreakTheBar(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	a := &App{Err: &w, errOut: &stderrGuard{w: &w}, progressMode: progressBar}
	t0 := time.Now()
	p := a.newProgress("Copy events.id", "rows", 1000, 0, t0)
	p.update(500, t0.Add(2*time.Second))
	if _, err := a.errOut.Write([]byte("WARN something happened\n")); err != nil {
		t.Fatal(err)
	}
	out := w.String()
	before, after, ok := strings.Cut(out, "WARN something happened\n")
	if !ok || !strings.HasSuffix(before, "\r") || !strings.Contains(lastDrawn(after), "(500/1000)") {
		t.Fatalf("log line not on a line of its own, or bar not redrawn: %q", out)
	}
	p.end(1000, true, t0.Add(4*time.Second))
	w.Reset()
	if _, err := a.errOut.Write([]byte("after\n")); err != nil || w.String() != "after\n" {
		t.Fatalf("after the bar ended: %q", w.String())
	}
}

// Quiet progress (bm steal, bm pending --perform): nothing for short work,
// so an early error stays the first line of stderr; lines once it lasts.
func TestQuietProgressLines(t *testing.T) {
	t.Parallel()
	var w bytes.Buffer
	a := &App{Err: &w, errOut: &stderrGuard{w: &w}, progressMode: progressLines}
	t0 := time.Now()
	p := a.newQuietProgress("CopyColumn from queue", "jobs", 100, 0, t0)
	p.update(40, t0.Add(2*time.Second))
	p.end(100, true, t0.Add(4*time.Second))
	if w.Len() != 0 {
		t.Fatalf("short work printed %q", w.String())
	}
	p = a.newQuietProgress("CopyColumn from queue", "jobs", 1000, 0, t0)
	for i := 1; i <= 12; i++ {
		p.update(int64(i)*50, t0.Add(time.Duration(i)*time.Second))
	}
	p.end(1000, true, t0.Add(20*time.Second))
	lines := strings.Split(strings.TrimSpace(w.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "CopyColumn from queue: 250/1000 jobs (25.0%), 50 jobs/s") ||
		!strings.HasPrefix(lines[2], "CopyColumn from queue: done, 1000 jobs in 20s") || strings.Contains(w.String(), "\r") {
		t.Fatalf("%q", w.String())
	}
}
