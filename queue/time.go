package queue

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"time"
)

// epoch returns t as float seconds since the epoch.
func epoch(t time.Time) float64 { return float64(t.Unix()) + float64(t.Nanosecond())/1e9 }

// formatScore prints a sorted-set score with full precision.
func formatScore(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// formatFloatTime always prints a fractional part: Sidekiq 8 reads a JSON
// integer as milliseconds (sidekiq-protocol.md §8.1).
func formatFloatTime(f float64) string { return strconv.FormatFloat(f, 'f', 6, 64) }

// NewJID returns 24 lowercase hex characters from a CSPRNG, like
// SecureRandom.hex(12).
func NewJID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
