package web

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
)

// Progress is the engine's progress of a migration ([batched.Progress]) as the
// pages print it.
type Progress struct {
	// Percent is the engine's progress figure; -1 when unknown.
	Percent float64
	// RowsPerSec is 0 when the migration is not moving or not measured.
	RowsPerSec float64
	// ETA is the estimated time left; valid only if HasETA.
	ETA    time.Duration
	HasETA bool
	// State is the engine's state, in words ("on hold", "paused all").
	State string
	// Class is the state as a CSS class suffix.
	Class string
	// Note is the engine's reason: why it is not moving or slowed, and the
	// command that changes it.
	Note string
}

func newProgress(p batched.Progress) Progress {
	out := Progress{Percent: -1, RowsPerSec: p.RowsPerSec, State: strings.ReplaceAll(string(p.State), "_", " "),
		Class: string(p.State), Note: p.Reason}
	if p.Percent != nil {
		out.Percent = *p.Percent
	}
	if p.ETA != nil {
		out.ETA, out.HasETA = time.Duration(*p.ETA*float64(time.Second)), true
	}
	return out
}

func humanFloat(f float64) string {
	switch {
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 10:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// humanDuration prints 3h12m, 4m05s, 12s.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	h := int64(d / time.Hour)
	mnt := int64(d/time.Minute) % 60
	s := int64(d/time.Second) % 60
	switch {
	case h >= 48:
		return fmt.Sprintf("%dd%02dh", h/24, h%24)
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, mnt)
	case mnt > 0:
		return fmt.Sprintf("%dm%02ds", mnt, s)
	}
	return fmt.Sprintf("%ds", s)
}
