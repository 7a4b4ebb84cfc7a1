package sidekiq

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestEnqueueDue(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	ctx, rdb := tb.ctx, tb.rdb
	due := epoch(fixedNow.Add(-time.Second))
	future := epoch(fixedNow.Add(time.Hour))
	rdb.ZAdd(ctx, "schedule",
		redisZ(due, `{"class":"A","args":[1],"queue":"s","at":1.5,"enqueued_at":2.5,"x":"<&>"}`),
		redisZ(future, `{"class":"A","args":[2],"queue":"s"}`))
	rdb.ZAdd(ctx, "retry",
		redisZ(due, `{"class":"A","args":[3],"queue":"r","retry_count":0}`),
		redisZ(due, `{"class":"A","args":[4]}`),
		redisZ(due, `garbage`))
	// Leftovers of an interrupted earlier pass are pushed first.
	rdb.RPush(ctx, stagingKey(tb.broker.Identity()), `{"class":"A","args":[5],"queue":"s"}`)

	n, err := tb.broker.EnqueueDue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("EnqueueDue = %d, want 5", n)
	}
	ts := formatFloatTime(epoch(fixedNow))
	if got := rdb.LRange(ctx, "queue:s", 0, -1).Val(); len(got) != 2 ||
		got[0] != `{"class":"A","args":[1],"queue":"s","enqueued_at":`+ts+`,"x":"<&>"}` ||
		got[1] != `{"class":"A","args":[5],"queue":"s","enqueued_at":`+ts+`}` {
		t.Errorf("queue:s = %v", got)
	}
	if got := rdb.LRange(ctx, "queue:r", 0, -1).Val(); len(got) != 1 || got[0] != `{"class":"A","args":[3],"queue":"r","retry_count":0,"enqueued_at":`+ts+`}` {
		t.Errorf("queue:r = %v", got)
	}
	if rdb.LLen(ctx, "queue:default").Val() != 1 {
		t.Error("an entry without queue did not go to default")
	}
	if got := rdb.ZRange(ctx, "schedule", 0, -1).Val(); len(got) != 1 || got[0] != `{"class":"A","args":[2],"queue":"s"}` {
		t.Errorf("future entry touched: schedule = %v", got)
	}
	if rdb.ZCard(ctx, "retry").Val() != 0 || rdb.ZCard(ctx, "dead").Val() != 1 {
		t.Error("garbage entry did not go to the dead set")
	}
	if rdb.Exists(ctx, stagingKey(tb.broker.Identity())).Val() != 0 {
		t.Error("staging list not empty")
	}
	if qs := rdb.SMembers(ctx, "queues").Val(); len(qs) != 3 {
		t.Errorf("queues = %v", qs)
	}
}

func TestEnqueueDueBatches(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	for i := range 250 {
		tb.rdb.ZAdd(tb.ctx, "schedule", redisZ(epoch(fixedNow)-float64(i), `{"class":"A","args":[`+itoa(i)+`]}`))
	}
	n, err := tb.broker.EnqueueDue(tb.ctx)
	if err != nil || n != 250 || tb.rdb.LLen(tb.ctx, "queue:default").Val() != 250 {
		t.Errorf("EnqueueDue = %d, %v", n, err)
	}
}

func TestPollInterval(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		procs    int
		avg      time.Duration
		min, max time.Duration
	}{
		{0, 0, 2500 * time.Millisecond, 7500 * time.Millisecond},
		{1, 5 * time.Second, 2500 * time.Millisecond, 7500 * time.Millisecond},
		{3, 5 * time.Second, 7500 * time.Millisecond, 22500 * time.Millisecond},
		{9, time.Second, 4500 * time.Millisecond, 13500 * time.Millisecond},
		{10, 5 * time.Second, 0, 50 * time.Second},
		{40, time.Second, 0, 40 * time.Second},
	} {
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for range 5000 {
			d := PollInterval(tc.procs, tc.avg, r)
			lo, hi = min(lo, d), max(hi, d)
		}
		// The range is covered and never left.
		span := tc.max - tc.min
		if lo < tc.min || hi >= tc.max || lo > tc.min+span/50 || hi < tc.max-span/50 {
			t.Errorf("%d processes, avg %s: observed [%s, %s], want within and spanning [%s, %s)", tc.procs, tc.avg, lo, hi, tc.min, tc.max)
		}
	}
}

func TestProcessCount(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	if n := tb.broker.ProcessCount(tb.ctx); n != 1 {
		t.Errorf("empty: %d", n)
	}
	tb.rdb.SAdd(tb.ctx, "processes", "a", "b", "c")
	if n := tb.broker.ProcessCount(tb.ctx); n != 3 {
		t.Errorf("ProcessCount = %d", n)
	}
}

func itoa(i int) string { return formatInt(int64(i)) }
