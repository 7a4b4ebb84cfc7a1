package sidekiq

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A minute with a one-digit hour and minute shows where Sidekiq pads.
var metricsNow = time.Date(2026, 2, 4, 8, 5, 30, 0, time.UTC)

func TestMetricsKeyFormats(t *testing.T) {
	t.Parallel()
	late := time.Date(2026, 12, 24, 17, 43, 0, 0, time.FixedZone("X", 3600)) // 16:43 UTC
	for _, tc := range []struct{ got, want string }{
		{metricsMinuteKey7(metricsNow), "j|20260204|8:5"},  // 7.x "j|%Y%m%d|%-H:%-M"
		{metricsMinuteKey8(metricsNow), "j|260204|8:05"},   // 8.x "j|%y%m%d|%-H:%M"
		{metricsTenMinuteKey8(metricsNow), "j|260204|8:0"}, // 8.x, last digit dropped
		{histogramKey7("K", metricsNow), "K-04-08:5"},      // 7.x "%d-%H:%-M"
		{histogramKey8("K", metricsNow), "h|K-4-8:5"},      // 8.x "h|...%-d-%-H:%-M"
		{metricsMinuteKey7(late), "j|20261224|16:43"},      // UTC
		{metricsMinuteKey8(late), "j|261224|16:43"},
		{metricsTenMinuteKey8(late), "j|261224|16:4"},
		{histogramKey7("A::B", late), "A::B-24-16:43"},
		{histogramKey8("A::B", late), "h|A::B-24-16:43"},
	} {
		if tc.got != tc.want {
			t.Errorf("key %q, want %q", tc.got, tc.want)
		}
	}
}

func TestHistogramBucket(t *testing.T) {
	t.Parallel()
	for ms, want := range map[int64]int{0: 0, 19: 0, 20: 1, 280: 7, 334_999: 24, 335_000: 25, 1 << 40: 25} {
		if got := histogramBucket(ms); got != want {
			t.Errorf("bucket(%d ms) = %d, want %d", ms, got, want)
		}
	}
}

// FlushMetrics writes the fields, histograms and TTLs Sidekiq 7.x and 8.x
// read, and keeps the counts when Redis cannot take them.
func TestFlushMetrics(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Now: func() time.Time { return metricsNow }})
	m := NewExecMetrics()
	job := mustParse(t, `{"class":"HardJob","args":[]}`)
	aj := mustParse(t, `{"class":"Sidekiq::ActiveJob::Wrapper","wrapped":"MailJob","args":[{}]}`)
	m.Record(job, 5*time.Millisecond, false)
	m.Record(job, 280*time.Millisecond, false)
	m.Record(job, 900*time.Millisecond, true) // failures count, their time does not
	m.Record(aj, 25*time.Millisecond, false)

	// Redis unreachable: nothing is lost.
	unreachable := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}) // fail at once
	t.Cleanup(func() { _ = unreachable.Close() })
	down, err := NewBroker(unreachable, BrokerOptions{Identity: "x:1:aaaaaaaaaaaa", Now: func() time.Time { return metricsNow }})
	if err != nil {
		t.Fatal(err)
	}
	if err := down.FlushMetrics(tb.ctx, m); err == nil {
		t.Fatal("flush to an unreachable Redis succeeded")
	}
	m.Record(job, 7*time.Millisecond, false)
	if err := tb.broker.FlushMetrics(tb.ctx, m); err != nil {
		t.Fatal(err)
	}

	for key, ttl := range map[string]time.Duration{"j|20260204|8:5": 8 * time.Hour, "j|260204|8:05": 8 * time.Hour, "j|260204|8:0": 72 * time.Hour} {
		h := tb.rdb.HGetAll(tb.ctx, key).Val()
		want := map[string]string{"HardJob|p": "4", "HardJob|f": "1", "HardJob|ms": "292", "MailJob|p": "1", "MailJob|ms": "25"}
		if len(h) != len(want) {
			t.Errorf("%s = %v, want %v", key, h, want)
		}
		for f, v := range want {
			if h[f] != v {
				t.Errorf("%s %s = %q, want %s", key, f, h[f], v)
			}
		}
		if got := tb.rdb.TTL(tb.ctx, key).Val(); got < ttl-time.Minute || got > ttl {
			t.Errorf("TTL of %s = %s, want %s", key, got, ttl)
		}
	}
	for _, key := range []string{"HardJob-04-08:5", "h|HardJob-4-8:5"} {
		buckets := readHistogram(t, tb, key)
		if buckets[0] != 2 || buckets[7] != 1 || sum(buckets) != 3 {
			t.Errorf("%s buckets = %v, want #0=2 (5, 7 ms) and #7=1 (280 ms)", key, buckets)
		}
		if got := tb.rdb.TTL(tb.ctx, key).Val(); got < 8*time.Hour-time.Minute || got > 8*time.Hour {
			t.Errorf("TTL of %s = %s", key, got)
		}
	}
	if b := readHistogram(t, tb, "h|MailJob-4-8:5"); b[1] != 1 || sum(b) != 1 {
		t.Errorf("MailJob histogram = %v, want #1=1 (25 ms)", b)
	}
	if err := tb.broker.FlushMetrics(tb.ctx, m); err != nil { // nothing left: no writes
		t.Fatal(err)
	}
	if got := tb.rdb.HGet(tb.ctx, "j|20260204|8:5", "HardJob|p").Val(); got != "4" {
		t.Errorf("a second flush changed HardJob|p to %s", got)
	}
}

// readHistogram reads the 26 u16 counters as Sidekiq's Histogram#fetch does.
func readHistogram(t *testing.T, tb *testBundle, key string) []int64 {
	t.Helper()
	args := make([]any, 0, 3*histogramBuckets)
	for i := range histogramBuckets {
		args = append(args, "GET", "u16", "#"+formatInt(int64(i)))
	}
	v, err := tb.rdb.BitField(tb.ctx, key, args...).Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sum(xs []int64) (n int64) {
	for _, x := range xs {
		n += x
	}
	return n
}

// Jobs are filed under "wrapped" (ActiveJob), else "class", decoded.
func TestMetricsClass(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		`{"class":"HardJob","args":[]}`:                        "HardJob",
		`{"class":"W","wrapped":"MailJob","args":[]}`:          "MailJob",
		`{"class":"W","wrapped":"","args":[]}`:                 "W",
		`{"class":"Caf\u00e9Job","args":[]}`:                   "CaféJob",
		`{"class":"W","wrapped":{"not":"a string"},"args":[]}`: "W",
	} {
		if got := string(metricsClass(mustParse(t, raw))); got != want {
			t.Errorf("metrics class of %s = %q, want %q", raw, got, want)
		}
	}
}
