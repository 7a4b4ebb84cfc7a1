package sidekiq

import (
	"encoding/json"
	"errors"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var jidRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

func TestPushLayout(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	c := tb.broker.Client()

	jid, err := c.Push(tb.ctx, "HardWorker", json.RawMessage(`[1,"<b>&",1180591620717411303424]`), PushOptions{
		Queue: "go", Retry: RetryTimes(3),
		Extra: map[string]json.RawMessage{"tags": json.RawMessage(`["x"]`), "display_class": json.RawMessage(`"Nice"`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !jidRE.MatchString(jid) {
		t.Errorf("jid %q is not 24 lowercase hex", jid)
	}
	if qs := tb.rdb.SMembers(tb.ctx, "queues").Val(); len(qs) != 1 || qs[0] != "go" {
		t.Errorf("queues = %v, want [go]", qs)
	}
	items := tb.rdb.LRange(tb.ctx, "queue:go", 0, -1).Val()
	if len(items) != 1 {
		t.Fatalf("queue:go has %d items", len(items))
	}
	ts := formatFloatTime(epoch(fixedNow))
	want := `{"class":"HardWorker","args":[1,"<b>&",1180591620717411303424],"queue":"go","jid":"` + jid +
		`","retry":3,"display_class":"Nice","tags":["x"],"created_at":` + ts + `,"enqueued_at":` + ts + `}`
	if items[0] != want {
		t.Errorf("payload\n got %s\nwant %s", items[0], want)
	}
	if !strings.Contains(ts, ".") {
		t.Errorf("timestamp %s has no fraction", ts)
	}

	// Defaults: queue "default", retry true.
	if _, err := c.Push(tb.ctx, "A", nil, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	j := mustParse(t, tb.rdb.LIndex(tb.ctx, "queue:default", 0).Val())
	if string(j.Get("retry")) != "true" || string(j.Args()) != "[]" || j.Queue() != "default" {
		t.Errorf("defaults wrong: %s", j.Raw())
	}
}

func TestPushBulkFIFO(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	args := make([]json.RawMessage, 2500) // more than one 1,000 slice
	for i := range args {
		args[i] = json.RawMessage("[" + strconv.Itoa(i) + "]")
	}
	jids, err := tb.broker.Client().PushBulk(tb.ctx, "A", args, PushOptions{Queue: "bulk"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, jid := range jids {
		if !jidRE.MatchString(jid) || seen[jid] {
			t.Fatalf("bad or duplicate jid %q", jid)
		}
		seen[jid] = true
	}
	if n := tb.rdb.LLen(tb.ctx, "queue:bulk").Val(); n != 2500 {
		t.Fatalf("LLEN = %d", n)
	}
	// The right end (fetched first) holds the first job: FIFO.
	var enq string
	for i := range 2500 {
		raw := tb.rdb.LIndex(tb.ctx, "queue:bulk", int64(-1-i)).Val()
		j := mustParse(t, raw)
		if string(j.Args()) != "["+strconv.Itoa(i)+"]" || j.JID() != jids[i] {
			t.Fatalf("position %d from the right holds %s", i, raw)
		}
		if i == 0 {
			enq = string(j.Get("enqueued_at"))
		} else if string(j.Get("enqueued_at")) != enq {
			t.Fatal("jobs of one bulk push have different enqueued_at")
		}
		if i > 10 {
			break
		}
	}
	if jids, err := tb.broker.Client().PushBulk(tb.ctx, "A", nil, PushOptions{}); err != nil || len(jids) != 0 {
		t.Errorf("empty bulk = %v, %v", jids, err)
	}
}

func TestPushScheduled(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	at := fixedNow.Add(90 * time.Second)
	jid, err := tb.broker.Client().Push(tb.ctx, "A", json.RawMessage(`[1]`), PushOptions{Queue: "later", At: at})
	if err != nil {
		t.Fatal(err)
	}
	if tb.rdb.Exists(tb.ctx, "queue:later", "queues").Val() != 0 {
		t.Error("a scheduled push touched queues or the queue list")
	}
	zs := tb.rdb.ZRangeWithScores(tb.ctx, "schedule", 0, -1).Val()
	if len(zs) != 1 {
		t.Fatalf("schedule = %v", zs)
	}
	if math.Abs(zs[0].Score-epoch(at)) > 1e-3 {
		t.Errorf("score = %f, want %f", zs[0].Score, epoch(at))
	}
	j := mustParse(t, zs[0].Member.(string))
	if j.Has("at") || j.Has("enqueued_at") || !j.Has("created_at") || j.JID() != jid || j.Queue() != "later" {
		t.Errorf("scheduled member = %s; want no at/enqueued_at", j.Raw())
	}

	// A time at or before now pushes immediately.
	if _, err := tb.broker.Client().Push(tb.ctx, "A", nil, PushOptions{Queue: "now", At: fixedNow}); err != nil {
		t.Fatal(err)
	}
	if tb.rdb.LLen(tb.ctx, "queue:now").Val() != 1 {
		t.Error("At == now was not pushed immediately")
	}
}

func TestPushInvalid(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	c := tb.broker.Client()
	for name, tc := range map[string]struct {
		class string
		args  string
		opts  PushOptions
		want  error
	}{
		"empty class":   {"", "[]", PushOptions{}, ErrInvalidJob},
		"object args":   {"A", `{"a":1}`, PushOptions{}, ErrInvalidArgs},
		"broken args":   {"A", `[1,`, PushOptions{}, ErrInvalidArgs},
		"bad retry":     {"A", `[]`, PushOptions{Retry: json.RawMessage(`"x"`)}, ErrInvalidJob},
		"reserved key":  {"A", `[]`, PushOptions{Extra: map[string]json.RawMessage{"jid": json.RawMessage(`"x"`)}}, ErrInvalidJob},
		"invalid extra": {"A", `[]`, PushOptions{Extra: map[string]json.RawMessage{"x": json.RawMessage(`{`)}}, ErrInvalidJob},
		"utf8 args":     {"A", "[\"a\xff\"]", PushOptions{}, ErrInvalidArgs},
		"utf8 class":    {"A\xff", `[]`, PushOptions{}, ErrInvalidJob},
		"control class": {"A\x00", `[]`, PushOptions{}, ErrInvalidJob},
		"blank class":   {" ", `[]`, PushOptions{}, ErrInvalidJob},
		"utf8 queue":    {"A", `[]`, PushOptions{Queue: "q\xff"}, ErrInvalidJob},
		"space queue":   {"A", `[]`, PushOptions{Queue: "a b"}, ErrInvalidJob},
		"control queue": {"A", `[]`, PushOptions{Queue: "a\r"}, ErrInvalidJob},
		"utf8 extra":    {"A", `[]`, PushOptions{Extra: map[string]json.RawMessage{"x": json.RawMessage("\"\xff\"")}}, ErrInvalidJob},
	} {
		if _, err := c.Push(tb.ctx, tc.class, json.RawMessage(tc.args), tc.opts); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
	if n := tb.rdb.DBSize(tb.ctx).Val(); n != 0 {
		t.Errorf("invalid pushes wrote %d keys", n)
	}
}
