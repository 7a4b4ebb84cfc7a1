// Package sleep holds the one cancellable sleep the runtime and the
// engines share.
package sleep

import (
	"context"
	"time"
)

// For waits d or until ctx is done; it reports whether ctx is alive.
func For(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
