package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRecoverOrphans(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Identity: "me:1:aaaaaaaaaaaa"})
	ctx, rdb := tb.ctx, tb.rdb
	dead, live, unreg := "dead:2:bbbbbbbbbbbb", "live:3:cccccccccccc", "gone:4:dddddddddddd"
	job := `{"class":"A","args":[1],"jid":"j1","queue":"q"}`

	rdb.HSet(ctx, keyFetchers, dead, `["q","r"]`, live, `["q"]`)
	rdb.LPush(ctx, inflightKey(dead, "q"), job, `{"class":"A","args":[2]}`)
	rdb.LPush(ctx, inflightKey(dead, "r"), "garbage")
	rdb.RPush(ctx, stagingKey(dead), `{"class":"A","args":[3],"queue":"s","at":5.5}`)
	rdb.Set(ctx, aliveKey(live), "1", time.Minute)
	rdb.LPush(ctx, inflightKey(live, "q"), `{"class":"A","args":[9]}`)
	// Not registered: found by SCAN.
	rdb.LPush(ctx, inflightKey(unreg, "u"), `{"class":"A","args":[4]}`)
	rdb.RPush(ctx, stagingKey("stager:5:eeeeeeeeeeee"), `{"class":"A","args":[6],"queue":"s"}`)
	// Our own list is never touched by our recovery.
	rdb.LPush(ctx, inflightKey(tb.broker.Identity(), "q"), `{"class":"A","args":[7]}`)

	res, err := tb.broker.RecoverOrphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Processes != 3 || res.Requeued != 5 || res.Killed != 1 {
		t.Errorf("result = %+v, want 3 processes, 5 requeued, 1 killed", res)
	}
	q := rdb.LRange(ctx, "queue:q", 0, -1).Val()
	if len(q) != 2 {
		t.Fatalf("queue:q = %v", q)
	}
	// Pushed back to the right end (next to run), with the rescue counted.
	if want := `{"class":"A","args":[1],"jid":"j1","queue":"q","ferry_recovered":1}`; q[0] != want && q[1] != want {
		t.Errorf("queue:q = %v, want it to hold %s", q, want)
	}
	for key, n := range map[string]int64{"queue:u": 1, "queue:s": 2, inflightKey(live, "q"): 1, inflightKey(tb.broker.Identity(), "q"): 1} {
		if got := rdb.LLen(ctx, key).Val(); got != n {
			t.Errorf("LLEN %s = %d, want %d", key, got, n)
		}
	}
	for _, key := range []string{inflightKey(dead, "q"), inflightKey(dead, "r"), stagingKey(dead), inflightKey(unreg, "u")} {
		if rdb.Exists(ctx, key).Val() != 0 {
			t.Errorf("%s still exists", key)
		}
	}
	if rdb.HExists(ctx, keyFetchers, dead).Val() || !rdb.HExists(ctx, keyFetchers, live).Val() {
		t.Error("registry: dead process not removed or live one removed")
	}
	if d := rdb.ZRange(ctx, "dead", 0, -1).Val(); len(d) != 1 || d[0] != "garbage" {
		t.Errorf("dead = %v", d)
	}
	if rdb.Exists(ctx, keyRecoveryLock).Val() != 0 {
		t.Error("lock not released")
	}
}

func TestRecoverPoisonPill(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{MaxRecoveries: 2})
	ctx, rdb := tb.ctx, tb.rdb
	for i, tc := range []struct{ job, wantDead string }{
		{`{"class":"A","args":[],"jid":"p1","ferry_recovered":2}`, "dead"},
		{`{"class":"A","args":[],"jid":"p2","ferry_recovered":2,"retry_count":3}`, "dead"},
		{`{"class":"A","args":[],"jid":"p3","ferry_recovered":2,"dead":false}`, "dropped"},
		{`{"class":"A","args":[],"jid":"p4","ferry_recovered":1}`, "requeued"},
	} {
		rdb.LPush(ctx, inflightKey("x:1:"+itoa(i), "q"), tc.job)
	}
	res, err := tb.broker.RecoverOrphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Killed != 3 || res.Requeued != 1 {
		t.Errorf("result = %+v", res)
	}
	if q := rdb.LRange(ctx, "queue:q", 0, -1).Val(); len(q) != 1 || !strings.Contains(q[0], `"jid":"p4","ferry_recovered":2`) {
		t.Errorf("queue:q = %v", q)
	}
	zs := rdb.ZRange(ctx, "dead", 0, -1).Val()
	if len(zs) != 2 {
		t.Fatalf("dead = %v", zs)
	}
	for _, m := range zs {
		e := mustParse(t, m)
		if e.str("error_class") != "Ferry::PoisonPill" || !strings.Contains(e.str("error_message"), "3 worker processes that died") ||
			!e.Has("failed_at") {
			t.Errorf("poison entry = %s", m)
		}
		if e.JID() == "p2" && !e.Has("retried_at") {
			t.Errorf("poison entry with retry_count lacks retried_at: %s", m)
		}
	}
}

func TestRecoveryLock(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	tb.rdb.Set(tb.ctx, keyRecoveryLock, "someone-else", time.Minute)
	tb.rdb.LPush(tb.ctx, inflightKey("dead:1:x", "q"), `{"class":"A","args":[]}`)
	if _, err := tb.broker.RecoverOrphans(tb.ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("err = %v, want ErrLocked", err)
	}
	if tb.rdb.LLen(tb.ctx, "queue:q").Val() != 0 || tb.rdb.Get(tb.ctx, keyRecoveryLock).Val() != "someone-else" {
		t.Error("recovered, or touched the lock, without holding it")
	}

	// Concurrent passes: exactly one recovers each job.
	tb.rdb.Del(tb.ctx, keyRecoveryLock)
	for i := range 200 {
		tb.rdb.LPush(tb.ctx, inflightKey("dead:1:x", "q"), `{"class":"A","args":[`+itoa(i)+`]}`)
	}
	other, _ := NewBroker(tb.rdb, BrokerOptions{Identity: "other:1:x"})
	errs := make(chan error, 2)
	for _, b := range []*Broker{tb.broker, other} {
		go func() { _, err := b.RecoverOrphans(tb.ctx); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, ErrLocked) {
			t.Fatal(err)
		}
	}
	if n := tb.rdb.LLen(tb.ctx, "queue:q").Val(); n != 201 {
		t.Errorf("queue:q has %d jobs, want 201 (each exactly once)", n)
	}
}
