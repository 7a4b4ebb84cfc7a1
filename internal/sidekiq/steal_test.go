package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

func bmJob(jid, arg0 string, n int) string {
	return fmt.Sprintf(`{"retry":3,"queue":"background_migration","class":"BackgroundMigrationWorker","args":[%q,["t","a","b",%d,%d]],"jid":%q,"created_at":1795272961.5,"enqueued_at":1795272961.5}`,
		arg0, n, n, jid)
}

// seedQueue LPUSHes members one at a time like a client, so the first is
// the oldest (rightmost).
func seedQueue(t *testing.T, tb *testBundle, members ...string) {
	t.Helper()
	for _, m := range members {
		if err := tb.rdb.LPush(tb.ctx, "queue:background_migration", m).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func stealOpts(arg0 string) StealOptions {
	return StealOptions{Class: "BackgroundMigrationWorker", Arg0: arg0, Queue: "background_migration", Chunk: 3}
}

func TestStealPartitionsInOrderAndKeepsBytes(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	others := []string{
		bmJob("o1", "OtherMigration", 1),
		`{"class":"HardWorker","args":["CopyColumn"],"jid":"o2","queue":"background_migration"}`, // other class, same arg
		`not json "BackgroundMigrationWorker" "CopyColumn"`,                                      // garbage with both needles
		`{"class":"BackgroundMigrationWorker","args":["Other","CopyColumn"],"jid":"o3"}`,         // needle in the wrong place
		`{"class":"BackgroundMigrationWorker","args":[],"jid":"o4","big":1180591620717411303424}`,
	}
	var want []string
	var queue []string
	for i := range 10 {
		m := bmJob(fmt.Sprintf("m%d", i), "CopyColumn", i)
		want = append(want, m)
		queue = append(queue, m)
		if i < len(others) {
			queue = append(queue, others[i])
		}
	}
	seedQueue(t, tb, queue...)
	sched := bmJob("s1", "CopyColumn", 100)
	tb.rdb.ZAdd(tb.ctx, "schedule", redis.Z{Score: 1795272999.123456, Member: sched}, redis.Z{Score: 5, Member: others[0]})

	var got []string
	res, err := Steal(tb.ctx, tb.rdb, stealOpts("CopyColumn"), func(_ context.Context, j *StolenJob) error {
		got = append(got, string(j.Raw))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Performed != 11 || res.Stolen[SourceSchedule] != 1 || res.Stolen[SourceQueue] != 10 {
		t.Fatalf("result %+v", res)
	}
	// GitLab's order: the scheduled set, then the queue oldest first;
	// bytes unchanged.
	if wantOrder := append([]string{sched}, want...); !slices.Equal(got, wantOrder) {
		t.Fatalf("performed\n%q\nwant\n%q", got, wantOrder)
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	slices.Reverse(left) // oldest first
	if !slices.Equal(left, others) {
		t.Fatalf("queue after steal\n%q\nwant\n%q", left, others)
	}
	if z, _ := tb.rdb.ZRange(tb.ctx, "schedule", 0, -1).Result(); !slices.Equal(z, others[:1]) {
		t.Fatalf("schedule after steal: %q", z)
	}
	assertNoStealKeys(t, tb)
}

func assertNoStealKeys(t *testing.T, tb *testBundle) {
	t.Helper()
	for _, pat := range []string{"ferry:steal*"} {
		if keys, _ := tb.rdb.Keys(tb.ctx, pat).Result(); len(keys) > 0 {
			t.Fatalf("steal keys left behind: %v", keys)
		}
	}
}

func TestStealFailurePushesEverythingBack(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	q := []string{bmJob("q1", "C", 1), bmJob("q2", "C", 2), bmJob("q3", "C", 3)}
	seedQueue(t, tb, q...)
	s1, s2 := bmJob("s1", "C", 10), bmJob("s2", "C", 11)
	tb.rdb.ZAdd(tb.ctx, "schedule", redis.Z{Score: 100.25, Member: s1}, redis.Z{Score: 200.5, Member: s2})
	boom := errors.New("boom")
	calls := 0
	res, err := Steal(tb.ctx, tb.rdb, stealOpts("C"), func(_ context.Context, j *StolenJob) error {
		calls++
		if j.Job.JID() == "q1" {
			return boom
		}
		return nil
	})
	if !errors.Is(err, ErrStealFailed) || !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	var se *StealError
	if !errors.As(err, &se) || se.Job.Source != SourceQueue {
		t.Fatalf("err = %#v", err)
	}
	// The scheduled set goes first (GitLab's order): s1 and s2 ran; then q1
	// (the oldest queued) failed and q1..q3 are back in the queue, bytes
	// intact.
	if calls != 3 || res.Performed != 2 || res.Returned != 3 {
		t.Fatalf("calls %d, result %+v", calls, res)
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	slices.Sort(left)
	if !slices.Equal(left, q) {
		t.Fatalf("queue = %q", left)
	}
	if n, _ := tb.rdb.ZCard(tb.ctx, "schedule").Result(); n != 0 {
		t.Fatalf("schedule has %d, want its 2 jobs performed", n)
	}
	assertNoStealKeys(t, tb)
}

func TestStealZsetFailureKeepsScore(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	s := bmJob("s1", "C", 10)
	tb.rdb.ZAdd(tb.ctx, "schedule", redis.Z{Score: 1795272999.123456, Member: s})
	_, err := Steal(tb.ctx, tb.rdb, stealOpts("C"), func(context.Context, *StolenJob) error { return errors.New("no") })
	if err == nil {
		t.Fatal("no error")
	}
	z, _ := tb.rdb.ZRangeWithScores(tb.ctx, "schedule", 0, -1).Result()
	if len(z) != 1 || z[0].Member != s || z[0].Score != 1795272999.123456 {
		t.Fatalf("schedule = %+v", z)
	}
}

func TestStealRetryDeadOnlyWithFlag(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	r, d := bmJob("r1", "C", 1), bmJob("d1", "C", 2)
	tb.rdb.ZAdd(tb.ctx, "retry", redis.Z{Score: 1, Member: r})
	tb.rdb.ZAdd(tb.ctx, "dead", redis.Z{Score: 2, Member: d})
	var got []string
	perform := func(_ context.Context, j *StolenJob) error {
		got = append(got, j.Job.JID()+"@"+string(j.Source))
		return nil
	}
	if res, err := Steal(tb.ctx, tb.rdb, stealOpts("C"), perform); err != nil || res.Performed != 0 {
		t.Fatalf("without flag: %+v %v", res, err)
	}
	o := stealOpts("C")
	o.RetryDead = true
	if _, err := Steal(tb.ctx, tb.rdb, o, perform); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"r1@retry", "d1@dead"}) {
		t.Fatalf("performed %v", got)
	}
}

func TestStealConcurrentNeverDoubleRuns(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	const n = 3000
	var p redis.Pipeliner = tb.rdb.Pipeline()
	for i := range n {
		if i%2 == 0 {
			p.LPush(tb.ctx, "queue:background_migration", bmJob(fmt.Sprint(i), "C", i))
		} else {
			p.ZAdd(tb.ctx, "schedule", redis.Z{Score: float64(i % 7), Member: bmJob(fmt.Sprint(i), "C", i)})
		}
	}
	if _, err := p.Exec(tb.ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := stealOpts("C")
			o.Chunk = 50
			_, err := Steal(tb.ctx, tb.rdb, o, func(_ context.Context, j *StolenJob) error {
				mu.Lock()
				seen[j.Job.JID()]++
				mu.Unlock()
				return nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != n {
		t.Fatalf("performed %d distinct jobs, want %d", len(seen), n)
	}
	for jid, c := range seen {
		if c != 1 {
			t.Fatalf("job %s performed %d times", jid, c)
		}
	}
	assertNoStealKeys(t, tb)
}

func TestRecoverStealsOfDeadProcess(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	seedQueue(t, tb, "newer")
	// A steal "dead-1" died: a hold list with two jobs and stolen jobs from
	// the queue and the scheduled set; no liveness key.
	tb.rdb.RPush(tb.ctx, stealHoldKey("dead-1"), "h2", "h1") // h1 is the oldest
	tb.rdb.RPush(tb.ctx, stealPrivateKey("dead-1"), "queue:background_migration\n\nq1", "schedule\n42.5\ns1")
	tb.rdb.HSet(tb.ctx, keySteals, "dead-1", "background_migration")
	// A live steal must be left alone.
	tb.rdb.RPush(tb.ctx, stealPrivateKey("live-1"), "schedule\n1\ns2")
	tb.rdb.HSet(tb.ctx, keySteals, "live-1", "background_migration")
	tb.rdb.Set(tb.ctx, stealAliveKey("live-1"), "1", 0)

	n, err := RecoverSteals(tb.ctx, tb.rdb, nil)
	if err != nil || n != 4 {
		t.Fatalf("recovered %d, %v", n, err)
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	if !slices.Equal(left, []string{"q1", "newer", "h2", "h1"}) {
		t.Fatalf("queue = %q", left)
	}
	if sc, _ := tb.rdb.ZScore(tb.ctx, "schedule", "s1").Result(); sc != 42.5 {
		t.Fatalf("s1 score %v", sc)
	}
	if ok, _ := tb.rdb.HExists(tb.ctx, keySteals, "live-1").Result(); !ok {
		t.Fatal("live steal was recovered")
	}
	if ok, _ := tb.rdb.HExists(tb.ctx, keySteals, "dead-1").Result(); ok {
		t.Fatal("dead steal still registered")
	}
}

func TestCountByArg0(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	seedQueue(t, tb, bmJob("1", "A", 1), bmJob("2", "A", 2), bmJob("3", "B", 3), `{"class":"X","args":["A"]}`, "junk")
	tb.rdb.ZAdd(tb.ctx, "schedule", redis.Z{Score: 1, Member: bmJob("4", "A", 4)})
	tb.rdb.ZAdd(tb.ctx, "dead", redis.Z{Score: 1, Member: bmJob("5", "B", 5)})
	c, err := CountByArg0(tb.ctx, tb.rdb, "BackgroundMigrationWorker", "background_migration", true)
	if err != nil {
		t.Fatal(err)
	}
	q := func(n int) map[string]int { return map[string]int{"background_migration": n} }
	if !reflect.DeepEqual(*c["A"], JobCounts{Queue: 2, ByQueue: q(2), Scheduled: 1}) ||
		!reflect.DeepEqual(*c["B"], JobCounts{Queue: 1, ByQueue: q(1), Dead: 1}) || len(c) != 2 {
		t.Fatalf("counts A=%+v B=%+v (%d classes)", c["A"], c["B"], len(c))
	}
	if c["A"].Remaining() != 3 {
		t.Fatal("remaining")
	}
}

func TestNeedle(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"CopyColumn": `"CopyColumn"`, "Foo::Bar": `"Foo::Bar"`, "a/b": "", `q"`: "", "é": "", "": "",
	} {
		if got := needle(in); got != want {
			t.Errorf("needle(%q) = %q, want %q", in, got, want)
		}
	}
}
