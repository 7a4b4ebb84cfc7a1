package sidekiq

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Payloads in the shapes Sidekiq 8 writes them (lib/sidekiq/job_util.rb
// now_in_millis for created_at/enqueued_at, job_retry.rb for failed_at and
// retried_at: integer epoch milliseconds) and 7.x writes them (float
// seconds), relative to fixedNow.
func sidekiq8Retry(failedAgo time.Duration) string {
	failed := fixedNow.Add(-failedAgo).UnixMilli()
	return fmt.Sprintf(`{"retry":true,"queue":"q","retry_for":3600,"args":[1],"class":"HardJob",`+
		`"jid":"b4a1c8e1f0e2d3c4b5a69788","created_at":%d,"enqueued_at":%d,"error_message":"boom",`+
		`"error_class":"RuntimeError","failed_at":%d,"retry_count":0}`, failed-5, failed-3, failed)
}

func sidekiq7Retry(failedAgo time.Duration) string {
	failed := epoch(fixedNow.Add(-failedAgo))
	return fmt.Sprintf(`{"retry":true,"queue":"q","retry_for":3600,"args":[1],"class":"HardJob",`+
		`"jid":"b4a1c8e1f0e2d3c4b5a69788","created_at":%s,"enqueued_at":%s,"error_message":"boom",`+
		`"error_class":"RuntimeError","failed_at":%s,"retry_count":0}`,
		formatFloatTime(failed-0.005), formatFloatTime(failed-0.003), formatFloatTime(failed))
}

func TestParseTimestamp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw  string
		want time.Time
		ok   bool
	}{
		{"1795272961997", time.UnixMilli(1795272961997), true},        // 8.x integer ms
		{"1795272961.997892", time.Unix(1795272961, 997892000), true}, // 6.4/7.x float seconds
		{" 1795272961.5 ", time.Unix(1795272961, 500000000), true},    // spaces around
		{"1.7952729615e9", time.Unix(1795272961, 500000000), true},    // exponent: a Float
		{"1795272961", time.UnixMilli(1795272961), true},              // an Integer is ms, as in 8.x
		{`"2026-01-01T00:00:00Z"`, time.Time{}, false},                // strings are not timestamps
		{"", time.Time{}, false}, {"null", time.Time{}, false}, {"1e999", time.Time{}, false},
	} {
		got, ok := ParseTimestamp([]byte(tc.raw))
		if ok != tc.ok || (ok && got.Sub(tc.want).Abs() > time.Microsecond) {
			t.Errorf("ParseTimestamp(%s) = %s, %v; want %s, %v", tc.raw, got, ok, tc.want, tc.ok)
		}
	}
}

// retry_for is checked against failed_at read by its JSON type: an 8.x job
// that first failed 2 hours ago with retry_for 3600 is dead, as Sidekiq
// 8.1.7 itself decides, whichever version recorded the first failure.
func TestFailRetryForReadsTimestampsByType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		payload string
		want    FailureOutcome
	}{
		{"8.x failed 2h ago", sidekiq8Retry(2 * time.Hour), OutcomeDead},
		{"8.x failed 10m ago", sidekiq8Retry(10 * time.Minute), OutcomeRetry},
		{"7.x failed 2h ago", sidekiq7Retry(2 * time.Hour), OutcomeDead},
		{"7.x failed 10m ago", sidekiq7Retry(10 * time.Minute), OutcomeRetry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, BrokerOptions{})
			if out, _ := failOnce(t, tb, tc.payload, Failure{Class: "RuntimeError", Message: "again"}); out != tc.want {
				t.Fatalf("outcome = %s, want %s", out, tc.want)
			}
			set := map[FailureOutcome]string{OutcomeDead: "dead", OutcomeRetry: "retry"}[tc.want]
			e, _ := onlyMember(t, tb, set)
			orig := mustParse(t, tc.payload)
			// The first failure's time is kept as its writer wrote it;
			// ferry's own retried_at is float seconds with a fraction.
			if string(e.Get("failed_at")) != string(orig.Get("failed_at")) {
				t.Errorf("failed_at = %s, want it unchanged (%s)", e.Get("failed_at"), orig.Get("failed_at"))
			}
			ra := string(e.Get("retried_at"))
			if at, ok := e.Time("retried_at"); !ok || !strings.Contains(ra, ".") || at.Sub(fixedNow).Abs() > time.Microsecond {
				t.Errorf("retried_at = %s, want now as float seconds with a fraction", ra)
			}
		})
	}
}

func TestJobTimeReadsBothUnits(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{sidekiq8Retry(time.Hour), sidekiq7Retry(time.Hour)} {
		j := mustParse(t, raw)
		for key, ago := range map[string]time.Duration{"failed_at": time.Hour, "enqueued_at": time.Hour + 3*time.Millisecond} {
			got, ok := j.Time(key)
			if want := fixedNow.Add(-ago); !ok || got.Sub(want).Abs() > time.Millisecond {
				t.Errorf("%s of %s = %s, %v; want %s", key, raw, got, ok, want)
			}
		}
	}
}
