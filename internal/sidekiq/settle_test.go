package sidekiq

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRetryDelayWindows(t *testing.T) {
	t.Parallel()
	// sidekiq-protocol.md §3: count⁴ + 15 + rand(10)·(count+1).
	for _, tc := range []struct {
		count    int
		min, max time.Duration
	}{
		{0, 15 * time.Second, 24 * time.Second},
		{1, 16 * time.Second, 34 * time.Second},
		{2, 31 * time.Second, 58 * time.Second},
		{3, 96 * time.Second, 132 * time.Second},
		{4, 271 * time.Second, 316 * time.Second},
		{24, 331_791 * time.Second, 332_016 * time.Second},
	} {
		var asked int
		lo := RetryDelay(tc.count, func(n int) int { asked = n; return 0 })
		hi := RetryDelay(tc.count, func(n int) int { return n - 1 })
		if asked != 10 {
			t.Errorf("count %d: rand asked for [0,%d), want [0,10)", tc.count, asked)
		}
		if lo != tc.min || hi != tc.max {
			t.Errorf("count %d: window %s..%s, want %s..%s", tc.count, lo, hi, tc.min, tc.max)
		}
	}
}

// failOnce puts raw in the private list as a fetched job and fails it.
func failOnce(t *testing.T, tb *testBundle, raw string, f Failure) (FailureOutcome, time.Time) {
	t.Helper()
	tb.rdb.LPush(tb.ctx, "queue:q", raw)
	ds, err := tb.broker.NewFetcher([]WeightedQueue{{Name: "q"}}).TryFetch(tb.ctx, 1)
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch: %v %v", ds, err)
	}
	out, at, err := tb.broker.Fail(tb.ctx, ds[0], f)
	if err != nil {
		t.Fatal(err)
	}
	if n := tb.rdb.LLen(tb.ctx, inflightKey(tb.broker.Identity(), "q")).Val(); n != 0 {
		t.Errorf("private list has %d entries after Fail", n)
	}
	return out, at
}

func onlyMember(t *testing.T, tb *testBundle, key string) (*Job, float64) {
	t.Helper()
	zs := tb.rdb.ZRangeWithScores(tb.ctx, key, 0, -1).Val()
	if len(zs) != 1 {
		t.Fatalf("%s has %d members, want 1", key, len(zs))
	}
	return mustParse(t, zs[0].Member.(string)), zs[0].Score
}

func TestFailRetryFields(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Rand: func(int) int { return 9 }})
	now := epoch(fixedNow)
	raw := `{"class":"A","args":[1180591620717411303424],"jid":"0123456789abcdef01234567","queue":"q","cattr":{"a":1}}`

	out, at := failOnce(t, tb, raw, Failure{Class: "RuntimeError", Message: "boom <&>"})
	if out != OutcomeRetry || !at.Equal(fixedNow.Add(24*time.Second)) {
		t.Fatalf("first failure: %s at %s, want retry at now+24s", out, at)
	}
	e, score := onlyMember(t, tb, "retry")
	if math.Abs(score-(now+24)) > 1e-5 {
		t.Errorf("score = %f, want now+24", score)
	}
	if e.str("error_message") != "boom <&>" || e.str("error_class") != "RuntimeError" {
		t.Errorf("error fields: %s", e.Raw())
	}
	if n, _ := e.Int("retry_count"); n != 0 || e.Has("retried_at") || !e.Has("failed_at") {
		t.Errorf("first failure fields: %s", e.Raw())
	}
	if !strings.HasPrefix(string(e.Raw()), raw[:len(raw)-1]+",") || !strings.Contains(string(e.Raw()), `"error_message":"boom <&>"`) {
		t.Errorf("original keys/bytes not preserved or HTML escaped: %s", e.Raw())
	}
	if e.Has("error_backtrace") {
		t.Error("backtrace stored without the backtrace option")
	}

	// Second failure: retried_at, retry_count 1, failed_at kept.
	tb.rdb.Del(tb.ctx, "retry")
	out, at = failOnce(t, tb, string(e.Raw()), Failure{Class: "RuntimeError", Message: "again"})
	e2, _ := onlyMember(t, tb, "retry")
	if n, _ := e2.Int("retry_count"); out != OutcomeRetry || n != 1 || !e2.Has("retried_at") ||
		string(e2.Get("failed_at")) != string(e.Get("failed_at")) || !at.Equal(fixedNow.Add(16*time.Second+18*time.Second)) {
		t.Errorf("second failure (%s at %s): %s", out, at, e2.Raw())
	}
}

func TestFailOutcomes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		payload string
		f       Failure
		want    FailureOutcome
		dest    string // zset holding the entry, "" for none
		queue   string // queue recorded in the entry
	}{
		{"retry true", `{"class":"A","args":[]}`, Failure{}, OutcomeRetry, "retry", "q"},
		{"retry 2 first", `{"class":"A","args":[],"retry":2}`, Failure{}, OutcomeRetry, "retry", "q"},
		{"retry 2 exhausted", `{"class":"A","args":[],"retry":2,"retry_count":1}`, Failure{}, OutcomeDead, "dead", "q"},
		{"retry 0 dead at once", `{"class":"A","args":[],"retry":0}`, Failure{}, OutcomeDead, "dead", "q"},
		{"retry false dropped", `{"class":"A","args":[],"retry":false}`, Failure{}, OutcomeDropped, "", ""},
		{"dead false dropped", `{"class":"A","args":[],"retry":0,"dead":false}`, Failure{}, OutcomeDropped, "", ""},
		{"default max exhausted", `{"class":"A","args":[],"retry_count":24}`, Failure{}, OutcomeDead, "dead", "q"},
		{"retry_queue", `{"class":"A","args":[],"queue":"q","retry_queue":"slow"}`, Failure{}, OutcomeRetry, "retry", "slow"},
		{"fetched queue wins", `{"class":"A","args":[],"queue":"elsewhere"}`, Failure{}, OutcomeRetry, "retry", "q"},
		{"retry_for elapsed", `{"class":"A","args":[],"retry_count":0,"failed_at":1.5,"retry_for":60}`, Failure{}, OutcomeDead, "dead", "q"},
		{"kill", `{"class":"A","args":[]}`, Failure{Kill: true}, OutcomeDead, "dead", "q"},
		{"kill with retry false", `{"class":"A","args":[],"retry":false}`, Failure{Kill: true}, OutcomeDropped, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, BrokerOptions{})
			out, _ := failOnce(t, tb, tc.payload, tc.f)
			if out != tc.want {
				t.Fatalf("outcome = %s, want %s", out, tc.want)
			}
			for _, set := range []string{"retry", "dead"} {
				n := tb.rdb.ZCard(tb.ctx, set).Val()
				if (set == tc.dest) != (n == 1) {
					t.Errorf("%s has %d entries", set, n)
				}
			}
			if tc.dest != "" {
				e, score := onlyMember(t, tb, tc.dest)
				if e.Queue() != tc.queue || e.str("error_class") != "StandardError" {
					t.Errorf("entry %s: queue %q, want %q; error_class StandardError", e.Raw(), e.Queue(), tc.queue)
				}
				if tc.dest == "dead" && math.Abs(score-epoch(fixedNow)) > 1e-5 {
					t.Errorf("dead score = %f, want now", score)
				}
				if string(e.Get("retry")) != string(mustParse(t, tc.payload).Get("retry")) {
					t.Errorf("retry option changed: %s", e.Raw())
				}
			}
		})
	}
}

// BrokerOptions.MaxRetries bounds retry:true jobs only: new(0) sends them
// to the dead set on their first failure (Sidekiq's max_retries 0), nil is
// Sidekiq's 25, and a job's own retry:N or retry:false always wins.
func TestFailBrokerMaxRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		max     *int
		payload string
		want    FailureOutcome
	}{
		{"0, retry true", new(0), `{"class":"A","args":[],"retry":true}`, OutcomeDead},
		{"0, retry unset", new(0), `{"class":"A","args":[]}`, OutcomeDead},
		{"0, job retry 3", new(0), `{"class":"A","args":[],"retry":3}`, OutcomeRetry},
		{"0, job retry false", new(0), `{"class":"A","args":[],"retry":false}`, OutcomeDropped},
		{"0, dead false", new(0), `{"class":"A","args":[],"retry":true,"dead":false}`, OutcomeDropped},
		{"2, first", new(2), `{"class":"A","args":[],"retry":true}`, OutcomeRetry},
		{"2, exhausted", new(2), `{"class":"A","args":[],"retry":true,"retry_count":1}`, OutcomeDead},
		{"nil is 25", nil, `{"class":"A","args":[],"retry":true,"retry_count":23}`, OutcomeRetry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, BrokerOptions{MaxRetries: tc.max})
			out, _ := failOnce(t, tb, tc.payload, Failure{Class: "RuntimeError"})
			if out != tc.want {
				t.Fatalf("outcome = %s, want %s", out, tc.want)
			}
			if out != OutcomeDead {
				return
			}
			// Sidekiq's fields, and the job's retry option kept as it was.
			j := mustParse(t, tc.payload)
			e, _ := onlyMember(t, tb, "dead")
			want := int64(0)
			if prev, ok := j.Int("retry_count"); ok {
				want = prev + 1
			}
			if n, _ := e.Int("retry_count"); n != want || (want == 0 && !e.Has("failed_at")) || string(e.Get("retry")) != string(j.Get("retry")) {
				t.Errorf("dead entry %s: want retry_count %d, failed_at and the job's retry option", e.Raw(), want)
			}
		})
	}
	if _, err := NewBroker(dummyRedis(t), BrokerOptions{MaxRetries: new(-1)}); err == nil || !strings.Contains(err.Error(), "MaxRetries must be >= 0") {
		t.Errorf("NewBroker(MaxRetries -1) = %v, want an error", err)
	}
}

func TestFailBacktrace(t *testing.T) {
	t.Parallel()
	lines := []string{"a.go:1", "b.go:2", "c.go:3"}
	for _, tc := range []struct {
		opt  string
		want []string // nil: no error_backtrace
	}{
		{``, nil},
		{`"backtrace":false,`, nil},
		{`"backtrace":true,`, lines},
		{`"backtrace":2,`, lines[:2]},
		{`"backtrace":10,`, lines},
	} {
		tb := setup(t, BrokerOptions{})
		j := mustParse(t, `{`+tc.opt+`"class":"A","args":[]}`)
		entry, out, _ := tb.broker.FailureEntry(j, "q", Failure{Message: "x", Backtrace: lines})
		e := mustParse(t, string(entry))
		if out != OutcomeRetry {
			t.Fatal(out)
		}
		if tc.want == nil {
			if e.Has("error_backtrace") {
				t.Errorf("%s: unexpected error_backtrace", tc.opt)
			}
			continue
		}
		enc := e.str("error_backtrace")
		if strings.ContainsAny(enc, "\n") {
			t.Errorf("%s: backtrace base64 is not strict", tc.opt)
		}
		got, err := DecodeBacktrace(enc)
		if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%s: backtrace = %v, %v; want %v", tc.opt, got, err, tc.want)
		}
	}
	// Ruby 6.4's Base64.encode64 wraps lines every 60 characters.
	long := make([]string, 40)
	for i := range long {
		long[i] = "some/long/ruby/path.rb:123:in `method'"
	}
	enc := encodeBacktrace(long)
	var wrapped strings.Builder
	for i := 0; i < len(enc); i += 60 {
		wrapped.WriteString(enc[i:min(i+60, len(enc))] + "\n")
	}
	if got, err := DecodeBacktrace(wrapped.String()); err != nil || len(got) != 40 {
		t.Errorf("wrapped base64: %d lines, %v", len(got), err)
	}
}

func TestFailMessageTruncatedAndScrubbed(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	entry, _, _ := tb.broker.FailureEntry(mustParse(t, `{"class":"A","args":[]}`), "q",
		Failure{Message: strings.Repeat("é", 12_000) + "\xff"})
	msg := mustParse(t, string(entry)).str("error_message")
	if n := len([]rune(msg)); n != 10_000 {
		t.Errorf("message has %d characters, want 10,000", n)
	}
}

func TestFailIgnoresMutationsAndInvalid(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	raw := `{"class":"A","args":[1]}`
	tb.rdb.LPush(tb.ctx, "queue:q", raw, "{broken")
	ds, _ := tb.broker.NewFetcher([]WeightedQueue{{Name: "q"}}).TryFetch(tb.ctx, 2)
	if len(ds) != 2 {
		t.Fatalf("fetched %d", len(ds))
	}
	ds[0].Job.SetString("mutated", "by middleware")
	if out, _, err := tb.broker.Fail(tb.ctx, ds[0], Failure{}); err != nil || out != OutcomeRetry {
		t.Fatal(out, err)
	}
	if e, _ := onlyMember(t, tb, "retry"); e.Has("mutated") {
		t.Errorf("retry entry kept a mutation: %s", e.Raw())
	}
	// An unparseable payload goes to the dead set as is.
	if out, _, err := tb.broker.Fail(tb.ctx, ds[1], Failure{}); err != nil || out != OutcomeDead {
		t.Fatal(out, err)
	}
	if d := tb.rdb.ZRange(tb.ctx, "dead", 0, -1).Val(); len(d) != 1 || d[0] != "{broken" {
		t.Errorf("dead = %v", d)
	}
	// Failing a job that is no longer ours (recovered elsewhere) writes nothing.
	if out, _, err := tb.broker.Fail(context.WithoutCancel(tb.ctx), ds[0], Failure{}); err != nil || out != OutcomeGone {
		t.Errorf("second Fail = %s, %v; want gone", out, err)
	}
	if tb.rdb.ZCard(tb.ctx, "retry").Val() != 1 {
		t.Error("a second retry entry was written")
	}
}

// Sidekiq's Web UI reads every entry of a Retries or Morgue page: valid
// JSON that is not an object, or a class name with invalid UTF-8 (6.4
// raises on it), broke the page for every job. Such entries are stored in
// a form it reads.
func TestFailedEntriesTheWebUICanRead(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	if out, _ := failOnce(t, tb, "{\"class\":\"Bad\xff\xfeName\",\"args\":[],\"jid\":\"ee0000000000000000000002\"}", Failure{}); out != OutcomeRetry {
		t.Fatalf("outcome %s", out)
	}
	e, _ := onlyMember(t, tb, "retry")
	if !utf8.Valid(e.Raw()) || e.Class() != "Bad\uFFFDName" {
		t.Errorf("retry entry %q: want valid UTF-8, the bad bytes as one U+FFFD", e.Raw())
	}
	for _, raw := range []string{"null", "[1,2]", "7"} {
		tb.rdb.Del(tb.ctx, "dead")
		if out, _ := failOnce(t, tb, raw, Failure{}); out != OutcomeDead {
			t.Fatalf("%s: outcome %s", raw, out)
		}
		e, _ := onlyMember(t, tb, "dead")
		var args []string
		if e.Class() != "Ferry::InvalidPayload" || json.Unmarshal(e.Get("args"), &args) != nil || len(args) != 1 || args[0] != raw ||
			e.Queue() != "q" || e.JID() == "" || e.str("error_message") == "" || !e.Has("failed_at") {
			t.Errorf("%s in the dead set as %s", raw, e.Raw())
		}
	}
	// An object that is no job (no class, args not an array) keeps its
	// fields and gets the reason and a jid, so the Morgue can show, retry
	// or delete it.
	for raw, why := range map[string]string{
		`{"args":[1],"queue":"q"}`: `"class" must be a non-empty string`,
		`{"class":"Probe","args":"notarray","jid":"aaaaaaaaaaaaaaaaaaaaaaaa"}`: `"args" must be an array`,
	} {
		tb.rdb.Del(tb.ctx, "dead")
		if out, _ := failOnce(t, tb, raw, Failure{}); out != OutcomeDead {
			t.Fatalf("%s: outcome %s", raw, out)
		}
		dead := tb.rdb.ZRange(tb.ctx, "dead", 0, -1).Val()
		if len(dead) != 1 {
			t.Fatalf("dead set %q", dead)
		}
		e, err := scanJob([]byte(dead[0]))
		if err != nil {
			t.Fatal(err)
		}
		orig, _ := scanJob([]byte(raw))
		if e.str("error_class") != "Ferry::InvalidPayload" || e.str("error_message") != why || !e.Has("failed_at") || e.JID() == "" ||
			(orig.JID() != "" && e.JID() != orig.JID()) || string(e.Get("args")) != string(orig.Get("args")) {
			t.Errorf("%s in the dead set as %s", raw, e.Raw())
		}
	}
	// The same when Kill buries it (no queue known).
	tb.rdb.Del(tb.ctx, "dead")
	if err := tb.broker.Kill(tb.ctx, []byte("null")); err != nil {
		t.Fatal(err)
	}
	if e, _ := onlyMember(t, tb, "dead"); e.Class() != "Ferry::InvalidPayload" {
		t.Errorf("Kill(null) buried %s", e.Raw())
	}
}

func TestDeadSetTrimsOnFail(t *testing.T) {
	t.Parallel()
	now := fixedNow
	tb := setup(t, BrokerOptions{DeadMaxJobs: 2, DeadTimeout: time.Minute, Now: func() time.Time { return now }})
	tb.rdb.ZAdd(tb.ctx, "dead", redisZ(epoch(now.Add(-61*time.Second)), "expired"), redisZ(epoch(now.Add(-59*time.Second)), "recent"))
	failOnce(t, tb, `{"class":"A","args":[],"retry":0}`, Failure{})
	got := tb.rdb.ZRange(tb.ctx, "dead", 0, -1).Val()
	if len(got) != 1 || !strings.Contains(got[0], `"class":"A"`) {
		t.Errorf("dead = %v, want only the new entry (timeout and max-jobs trims)", got)
	}
}
