package sidekiq

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"math"
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

// ParseTimestamp reads a job timestamp (created_at, enqueued_at, failed_at,
// retried_at) by its JSON type, as Sidekiq 8 does (api.rb
// time_from_timestamp): an integer is epoch milliseconds, as 8.x writes
// them; a number with a fraction or exponent is epoch seconds, as 6.4 and
// 7.x write them. ok is false for anything else.
func ParseTimestamp(raw []byte) (time.Time, bool) {
	v := bytes.TrimSpace(raw)
	if len(v) == 0 {
		return time.Time{}, false
	}
	if bytes.ContainsAny(v, ".eE") {
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return time.Time{}, false
		}
		sec := math.Floor(f)
		return time.Unix(int64(sec), int64((f-sec)*1e9)), true
	}
	ms, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// NewJID returns 24 lowercase hex characters from a CSPRNG, like
// SecureRandom.hex(12).
func NewJID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
