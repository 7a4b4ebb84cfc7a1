package sidekiq

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// rubyPayload is a payload a Ruby 6.4.1 client wrote (sidekiq-protocol.md
// §1.1), with class options, a nested hash and a bare integer > 2^64.
const rubyPayload = `{"retry":true,"queue":"default","backtrace":5,"tags":["probe"],"args":[1,"two",{"three":3.5},1180591620717411303424],"class":"HardWorker","jid":"af740db0b10d697247f7ce80","created_at":1795272961.997892,"enqueued_at":1795272961.9979684}`

func TestParseJobRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in string }{
		{"ruby payload", rubyPayload},
		{"unknown keys", `{"class":"A","args":[],"cattr":{"user":{"id":1}},"locale":"de","bid":"b-1","lock_digest":"x"}`},
		{"html chars", `{"class":"A<B>&C","args":["<script>&amp;</script>"],"queue":"q"}`},
		{"unicode and escapes", `{"class":"Ünï","args":["\u2028 \"quoted\" \\ tab\t","日本"]}`},
		{"whitespace", " {\n \"class\" : \"A\" ,\t\"args\" : [ 1 , 2 ] }\n"},
		{"key needing unescape", `{"cl\u0061ss":"A","args":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := mustParse(t, tc.in)
			if !bytes.Equal(j.Raw(), []byte(tc.in)) {
				t.Errorf("Raw() = %s, want the exact input", j.Raw())
			}
			// Re-encoding keeps key order, values and unknown keys.
			enc := j.Encode()
			if !json.Valid(enc) {
				t.Fatalf("Encode() is not valid JSON: %s", enc)
			}
			var want, got any
			_ = json.Unmarshal([]byte(tc.in), &want)
			_ = json.Unmarshal(enc, &got)
			if wantS, gotS := mustMarshal(t, want), mustMarshal(t, got); wantS != gotS {
				t.Errorf("Encode() = %s, want the same object as %s", enc, tc.in)
			}
			if !strings.Contains(tc.in, `\u0061`) && compact(t, tc.in) != compact(t, string(enc)) {
				t.Errorf("Encode() = %s, want %s (same order, no escaping)", enc, compact(t, tc.in))
			}
			if j.Class() == "" {
				t.Error("Class() is empty")
			}
		})
	}
}

func TestJobBytesPreserved(t *testing.T) {
	t.Parallel()
	j := mustParse(t, rubyPayload)
	if got, want := string(j.Args()), `[1,"two",{"three":3.5},1180591620717411303424]`; got != want {
		t.Errorf("Args() = %s, want %s", got, want)
	}
	c := j.Clone()
	c.SetString("error_message", "a < b && c > d")
	enc := string(c.Encode())
	if !strings.HasPrefix(enc, rubyPayload[:len(rubyPayload)-1]+",") {
		t.Errorf("Clone+Set changed existing keys or order:\n%s", enc)
	}
	if !strings.HasSuffix(enc, `,"error_message":"a < b && c > d"}`) {
		t.Errorf("HTML characters were escaped or the key is misplaced: %s", enc)
	}
	if !bytes.Equal(j.Raw(), []byte(rubyPayload)) {
		t.Error("Clone changed the original")
	}
	if got := c.Raw(); !bytes.Equal(got, c.Encode()) {
		t.Errorf("Raw() of a clone = %s, want its encoding", got)
	}

	c.Delete("tags")
	c.Delete("missing")
	if c.Has("tags") || strings.Contains(string(c.Encode()), "tags") {
		t.Errorf("Delete left the key: %s", c.Encode())
	}
}

func TestJobAccessors(t *testing.T) {
	t.Parallel()
	j := mustParse(t, rubyPayload)
	if j.JID() != "af740db0b10d697247f7ce80" || j.Queue() != "default" || j.Class() != "HardWorker" {
		t.Errorf("jid/queue/class = %q/%q/%q", j.JID(), j.Queue(), j.Class())
	}
	if f, ok := j.Float("created_at"); !ok || f != 1795272961.997892 {
		t.Errorf("Float(created_at) = %v, %v", f, ok)
	}
	if _, ok := j.Int("retry_count"); ok {
		t.Error("Int(retry_count) ok for a missing key")
	}
	if !j.Truthy("backtrace") || j.Truthy("dead") {
		t.Error("Truthy wrong")
	}
	noQueue := mustParse(t, `{"class":"A","args":[],"display_class":"Nice"}`)
	if noQueue.Queue() != "default" || noQueue.DisplayClass() != "Nice" {
		t.Errorf("Queue()/DisplayClass() = %q/%q", noQueue.Queue(), noQueue.DisplayClass())
	}
	wrapped := mustParse(t, `{"class":"JobWrapper","wrapped":"Real","args":[]}`)
	if wrapped.DisplayClass() != "Real" {
		t.Errorf("DisplayClass() = %q, want the wrapped class", wrapped.DisplayClass())
	}
}

func TestRetryPolicy(t *testing.T) {
	t.Parallel()
	def := RetryPolicy{Enabled: true, Max: -1}
	for _, tc := range []struct {
		retry string
		want  RetryPolicy
	}{
		{"", def},
		{`"retry":null,`, def},
		{`"retry":true,`, RetryPolicy{Enabled: true, Max: -1}},
		{`"retry":false,`, RetryPolicy{}},
		{`"retry":5,`, RetryPolicy{Enabled: true, Max: 5}},
		{`"retry":0,`, RetryPolicy{Enabled: true, Max: 0}},
		{`"retry":-3,`, RetryPolicy{Enabled: true, Max: 0}},
		{`"retry":"yes",`, def},
	} {
		j := mustParse(t, `{`+tc.retry+`"class":"A","args":[]}`)
		if got := j.Retry(def); got != tc.want {
			t.Errorf("retry %q: Retry() = %+v, want %+v", tc.retry, got, tc.want)
		}
	}
}

func TestParseJobInvalid(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		``, `   `, `null`, `[]`, `"x"`, `42`, `{`, `{"class":"A","args":[]`,
		`{"class":"A","args":[]}]`, `{"class":"A","args":[]} {}`, `{"class":"A","args":[]}x`,
		`{"args":[]}`, `{"class":"","args":[]}`, `{"class":5,"args":[]}`,
		`{"class":"A"}`, `{"class":"A","args":{}}`, `{"class":"A","args":"[]"}`, `{"class":"A","args":null}`,
		`{"class":"A","args":[1,]}`, `{'class':'A'}`,
	} {
		j, err := ParseJob([]byte(in))
		if !errors.Is(err, ErrInvalidJob) {
			t.Errorf("ParseJob(%q) = %v, %v; want ErrInvalidJob", in, j, err)
		}
	}
}

func TestNewJobAndTime(t *testing.T) {
	t.Parallel()
	j := NewJob("A", nil, "q")
	j.SetTime("created_at", 1700000000)
	j.SetInt("n", -4)
	if got, want := string(j.Encode()), `{"class":"A","args":[],"queue":"q","created_at":1700000000.000000,"n":-4}`; got != want {
		t.Errorf("Encode() = %s, want %s", got, want)
	}
	if got := formatFloatTime(epoch(time.Unix(1, 5e8))); got != "1.500000" {
		t.Errorf("formatFloatTime = %s", got)
	}
	for range 20 {
		jid := NewJID()
		if len(jid) != 24 || strings.Trim(jid, "0123456789abcdef") != "" {
			t.Fatalf("NewJID() = %q, want 24 lowercase hex", jid)
		}
	}
}

func FuzzParseJob(f *testing.F) {
	for _, s := range []string{
		rubyPayload, `{"class":"A","args":[]}`, `{"class":"A","args":[],"class":"B"}`,
		`{"class":"\u00e9\ud83d\ude00","args":[{"a":[1,2,{"b":"]}"}]}],"x":"\\\""}`,
		`{"class":"A","args":[1e400, -0.0, 1180591620717411303424]}`, `{}`, `[`, `{"class":"A","args":[]} `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJob(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidJob) {
				t.Fatalf("error does not wrap ErrInvalidJob: %v", err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		if items, err := j.ArgsItems(); err != nil {
			t.Fatalf("ArgsItems of %q: %v", data, err)
		} else {
			var want []json.RawMessage
			if err := json.Unmarshal(j.Args(), &want); err != nil || len(want) != len(items) {
				t.Fatalf("ArgsItems of %q = %q, want %q (%v)", data, items, want, err)
			}
			for i := range items {
				if compact(t, string(items[i])) != compact(t, string(want[i])) {
					t.Fatalf("ArgsItems[%d] of %q = %q, want %q", i, data, items[i], want[i])
				}
			}
		}
		enc := j.Encode()
		j2, err := ParseJob(enc)
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", enc, data, err)
		}
		if j2.Class() != j.Class() || j2.JID() != j.JID() || j2.Queue() != j.Queue() ||
			!bytes.Equal(j2.Args(), j.Args()) || len(j2.fields) != len(j.fields) {
			t.Fatalf("re-parse differs: %q vs %q", enc, data)
		}
		for i, f := range j.fields {
			if j2.fields[i].key != f.key || !bytes.Equal(j2.fields[i].val, f.val) {
				t.Fatalf("key %q differs after re-parse of %q", f.key, enc)
			}
		}
		if !bytes.Equal(j2.Encode(), enc) {
			t.Fatalf("Encode not stable: %q vs %q", j2.Encode(), enc)
		}
	})
}

func mustMarshal(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func compact(t testing.TB, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestRawKeysSurviveDeleteAndClone(t *testing.T) {
	raw := []byte("{\"a\":1,\"k\\u00e9\":2,\"class\":\"X\",\"args\":[],\"\xff\":3}")
	j, err := ParseJob(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := j.Encode(); !bytes.Equal(got, raw) {
		t.Fatalf("Encode = %q, want the original %q", got, raw)
	}
	c := j.Clone()
	c.Delete("a")
	want := []byte("{\"k\\u00e9\":2,\"class\":\"X\",\"args\":[],\"\xff\":3}")
	if got := c.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("after Delete, Encode = %q, want %q", got, want)
	}
}
