package sidekiq

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestParseQueues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    []WeightedQueue
		wantErr bool
	}{
		{"a", []WeightedQueue{{"a", 0}}, false},
		{" a , b ", []WeightedQueue{{"a", 0}, {"b", 0}}, false},
		{"a:3,b:1", []WeightedQueue{{"a", 3}, {"b", 1}}, false},
		{"a,,b,", []WeightedQueue{{"a", 0}, {"b", 0}}, false},
		{"", nil, true},
		{"a,a", nil, true},
		{"a:x", nil, true},
		{"a:-1", nil, true},
		{":3", nil, true},
	} {
		got, err := ParseQueues(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("ParseQueues(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestFetchOrder(t *testing.T) {
	t.Parallel()
	b, _ := NewBroker(dummyRedis(t), BrokerOptions{Identity: "x"})

	strict := b.NewFetcher([]WeightedQueue{{"a", 0}, {"b", 0}, {"c", 0}})
	for range 10 {
		if got := strict.order(); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("strict order = %v", got)
		}
	}

	weighted := b.NewFetcher([]WeightedQueue{{"a", 3}, {"b", 1}, {"c", 0}})
	weighted.rnd = rand.New(rand.NewPCG(1, 2))
	first := map[string]int{}
	const n = 20_000
	for range n {
		o := weighted.order()
		if len(o) != 3 {
			t.Fatalf("weighted order %v is not a de-duplicated permutation", o)
		}
		first[o[0]]++
	}
	// Weights 3, 1 and 0 (counted as 1): first with probability 3/5, 1/5, 1/5.
	for q, want := range map[string]float64{"a": 0.6, "b": 0.2, "c": 0.2} {
		if got := float64(first[q]) / n; got < want-0.02 || got > want+0.02 {
			t.Errorf("queue %s first in %.3f of fetches, want about %.2f", q, got, want)
		}
	}
}

func TestFetchAckRequeue(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	ctx, rdb := tb.ctx, tb.rdb
	for i, raw := range []string{
		`{"class":"A","args":[1],"jid":"1"}`,
		`{"class":"A","args":[2],"jid":"2","x":"<&>"}`,
		`not json`,
	} {
		rdb.LPush(ctx, "queue:a", raw)
		_ = i
	}
	f := tb.broker.NewFetcher([]WeightedQueue{{Name: "a"}})
	ds, err := f.TryFetch(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 {
		t.Fatalf("fetched %d jobs, want 3", len(ds))
	}
	// FIFO, and each job is now in the private list and not in the queue.
	if string(ds[0].Raw) != `{"class":"A","args":[1],"jid":"1"}` || ds[0].Queue != "a" || ds[0].Job == nil {
		t.Errorf("first delivery = %+v", ds[0])
	}
	if ds[2].Job != nil || ds[2].Err == nil {
		t.Errorf("invalid payload delivered as a job: %+v", ds[2])
	}
	private := inflightKey("host:1:aaaaaaaaaaaa", "a")
	if rdb.LLen(ctx, "queue:a").Val() != 0 || rdb.LLen(ctx, private).Val() != 3 {
		t.Fatalf("queue/private = %d/%d, want 0/3", rdb.LLen(ctx, "queue:a").Val(), rdb.LLen(ctx, private).Val())
	}
	inflight, err := tb.broker.InFlight(ctx, "a")
	if err != nil || len(inflight) != 3 || !bytes.Equal(inflight[0].Raw, ds[0].Raw) {
		t.Errorf("InFlight = %v, %v", inflight, err)
	}
	// The fetch refreshed our liveness, as a heartbeat does.
	if ttl := rdb.PTTL(ctx, aliveKey("host:1:aaaaaaaaaaaa")).Val(); ttl <= 19*time.Second || ttl > 20*time.Second {
		t.Errorf("alive key TTL after a fetch = %s, want 20s", ttl)
	}
	if tb.broker.LastAliveRefresh().IsZero() {
		t.Error("LastAliveRefresh not set by a fetch")
	}

	// Ack removes exactly the acknowledged bytes.
	if err := tb.broker.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	left := rdb.LRange(ctx, private, 0, -1).Val()
	if len(left) != 2 || slices.Contains(left, string(ds[0].Raw)) {
		t.Errorf("after ack, private list = %v", left)
	}

	// Requeue pushes the rest back unchanged to the right end.
	rdb.LPush(ctx, "queue:a", `{"class":"A","args":[3]}`)
	n, err := tb.broker.Requeue(ctx, ds[1], ds[2])
	if err != nil || n != 2 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	if rdb.LLen(ctx, private).Val() != 0 {
		t.Error("private list not empty after requeue")
	}
	if got := rdb.LIndex(ctx, "queue:a", -1).Val(); got != "not json" {
		t.Errorf("right end = %q, want the last requeued job", got)
	}
	if got := rdb.LIndex(ctx, "queue:a", -2).Val(); got != string(ds[1].Raw) {
		t.Errorf("next = %q, want %q byte for byte", got, ds[1].Raw)
	}
	// Requeueing again is a no-op: the job is no longer ours.
	if n, err := tb.broker.Requeue(ctx, ds[1]); err != nil || n != 0 {
		t.Errorf("second Requeue = %d, %v", n, err)
	}
	if !rdb.SIsMember(ctx, "queues", "a").Val() {
		t.Error("requeue did not SADD queues")
	}
}

func TestFetchStrictAndBlocking(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	ctx, rdb := tb.ctx, tb.rdb
	for _, q := range []string{"low", "high", "low"} {
		rdb.LPush(ctx, "queue:"+q, `{"class":"A","args":["`+q+`"]}`)
	}
	f := tb.broker.NewFetcher([]WeightedQueue{{Name: "high"}, {Name: "low"}})
	ds, err := f.TryFetch(ctx, 2)
	if err != nil || len(ds) != 2 || ds[0].Queue != "high" || ds[1].Queue != "low" {
		t.Fatalf("strict TryFetch = %v, %v", ds, err)
	}
	if rdb.LLen(ctx, "queue:low").Val() != 1 {
		t.Error("fetched more than asked")
	}

	// Empty queues: Fetch blocks, and a push wakes it.
	rdb.Del(ctx, "queue:low")
	single := tb.broker.NewFetcher([]WeightedQueue{{Name: "wake"}})
	got := make(chan []*Delivery, 1)
	go func() {
		ds, _ := single.Fetch(ctx, 3, 5*time.Second)
		got <- ds
	}()
	start := time.Now()
	// Push once the fetcher is blocked (BLMOVE shows up as a blocked client).
	for rdb.Info(ctx, "clients").Val() == "" || !blockedClients(t, tb) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("fetcher never blocked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rdb.LPush(ctx, "queue:wake", `{"class":"A","args":[]}`)
	select {
	case ds := <-got:
		if len(ds) != 1 || ds[0].Queue != "wake" {
			t.Fatalf("Fetch = %v", ds)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Fetch was not woken by a push")
	}

	// With nothing to fetch it returns empty after the wait.
	ds, err = single.Fetch(ctx, 1, 1500*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Errorf("idle Fetch = %v, %v", ds, err)
	}
	multi := tb.broker.NewFetcher([]WeightedQueue{{Name: "x", Weight: 1}, {Name: "y", Weight: 1}})
	ds, err = multi.Fetch(ctx, 1, 1500*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Errorf("idle multi-queue Fetch = %v, %v", ds, err)
	}
}

func blockedClients(t *testing.T, tb *testBundle) bool {
	t.Helper()
	info := tb.rdb.Info(tb.ctx, "clients").Val()
	return !bytes.Contains([]byte(info), []byte("blocked_clients:0\r"))
}

func TestKillAndDeadTrims(t *testing.T) {
	t.Parallel()
	now := fixedNow
	tb := setup(t, BrokerOptions{DeadMaxJobs: 3, DeadTimeout: time.Hour, Now: func() time.Time { return now }})
	ctx, rdb := tb.ctx, tb.rdb
	// An entry older than DeadTimeout is trimmed by score.
	rdb.ZAdd(ctx, "dead", redisZ(epoch(now.Add(-2*time.Hour)), "old"))
	for i := range 4 {
		now = fixedNow.Add(time.Duration(i) * time.Second)
		if err := tb.broker.Kill(ctx, []byte(`{"class":"A","args":[`+string(rune('0'+i))+`]}`)); err != nil {
			t.Fatal(err)
		}
	}
	got := rdb.ZRange(ctx, "dead", 0, -1).Val()
	// ZREMRANGEBYRANK 0 -3 keeps the newest DeadMaxJobs-1 = 2 entries.
	want := []string{`{"class":"A","args":[2]}`, `{"class":"A","args":[3]}`}
	if !slices.Equal(got, want) {
		t.Errorf("dead = %v, want %v", got, want)
	}
	_ = json.Valid
}

// Acks riding along with a fetch remove exactly their jobs, from the
// private list of each one's own queue.
func TestFetchAndAck(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	ctx, rdb := tb.ctx, tb.rdb
	rdb.LPush(ctx, "queue:x", `{"class":"A","args":["x"]}`)
	rdb.LPush(ctx, "queue:y", `{"class":"A","args":["y"]}`, `{"class":"A","args":["y2"]}`)
	f := tb.broker.NewFetcher([]WeightedQueue{{Name: "x", Weight: 1}, {Name: "y", Weight: 1}})
	var got []*Delivery
	for len(got) < 3 {
		ds, err := f.TryFetch(ctx, 3)
		if err != nil || len(ds) == 0 {
			t.Fatalf("TryFetch = %v, %v", ds, err)
		}
		got = append(got, ds...)
	}
	ds, err := f.FetchAndAck(ctx, got[:2], 1, 0)
	if err != nil || len(ds) != 0 {
		t.Fatalf("FetchAndAck = %v, %v", ds, err)
	}
	id := tb.broker.Identity()
	left := append(rdb.LRange(ctx, inflightKey(id, "x"), 0, -1).Val(), rdb.LRange(ctx, inflightKey(id, "y"), 0, -1).Val()...)
	if len(left) != 1 || left[0] != string(got[2].Raw) {
		t.Errorf("private lists hold %q, want only %s", left, got[2].Raw)
	}
}
