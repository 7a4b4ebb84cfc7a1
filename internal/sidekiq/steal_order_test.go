package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// The scheduled set is performed by time, whatever ZSCAN's hash order,
// with members of equal score and other classes' members in between.
func TestStealScheduleInScoreOrder(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	var want []string
	var zs []redis.Z
	for i := range 40 {
		m := bmJob(fmt.Sprintf("s%02d", i), "C", i)
		score := float64(1000 + i/3) // three members per score
		want = append(want, m)
		zs = append(zs, redis.Z{Score: score, Member: m}, redis.Z{Score: score, Member: bmJob(fmt.Sprintf("o%02d", i), "Other", i)})
	}
	tb.rdb.ZAdd(tb.ctx, "schedule", zs...)
	var got []string
	res, err := Steal(tb.ctx, tb.rdb, stealOpts("C"), func(_ context.Context, j *StolenJob) error {
		got = append(got, string(j.Raw))
		return nil
	})
	if err != nil || res.Performed != 40 {
		t.Fatal(res, err)
	}
	if len(got) != len(want) {
		t.Fatalf("performed %d of %d", len(got), len(want))
	}
	for i := 1; i < len(got); i++ {
		if scoreOf(t, got[i]) < scoreOf(t, got[i-1]) {
			t.Fatalf("performed out of time order at %d: %q", i, got)
		}
	}
	if n, _ := tb.rdb.ZCard(tb.ctx, "schedule").Result(); n != 40 {
		t.Fatalf("schedule has %d, want the 40 others", n)
	}
	assertNoStealKeys(t, tb)
}

// scoreOf recovers the test's score from the job's jid (s<i>, 3 per score).
func scoreOf(t *testing.T, raw string) int {
	t.Helper()
	j, err := ParseJob([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	var i int
	fmt.Sscanf(j.JID(), "s%d", &i)
	return i / 3
}

// seedC queues n jobs of class C, q0 the oldest, and returns them.
func seedC(t *testing.T, tb *testBundle, n int) []string {
	t.Helper()
	var q []string
	for i := range n {
		q = append(q, bmJob(fmt.Sprintf("q%d", i), "C", i))
	}
	seedQueue(t, tb, q...)
	return q
}

// With KeepGoing a failing job goes back where it came from (queue, or
// its set with its score) and every other job is performed and removed;
// the error lists the failures.
func TestStealKeepGoing(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	q := seedC(t, tb, 30)
	bad := bmJob("sbad", "C", 99)
	tb.rdb.ZAdd(tb.ctx, "schedule", redis.Z{Score: 123.5, Member: bad}, redis.Z{Score: 124, Member: bmJob("sgood", "C", 98)})
	var mu sync.Mutex
	calls := map[string]int{}
	opts := stealOpts("C")
	opts.KeepGoing, opts.Concurrency = true, 4
	res, err := Steal(tb.ctx, tb.rdb, opts, func(_ context.Context, j *StolenJob) error {
		mu.Lock()
		calls[j.Job.JID()]++
		mu.Unlock()
		if j.Job.JID() == "q7" || j.Job.JID() == "sbad" {
			return errors.New("boom " + j.Job.JID())
		}
		return nil
	})
	var sf *StealFailures
	if !errors.As(err, &sf) || !errors.Is(err, ErrStealFailed) || len(sf.Failed) != 2 || len(res.Failed) != 2 {
		t.Fatalf("err = %v, result %+v", err, res)
	}
	if res.Performed != 30 || res.Returned != 2 || len(calls) != 32 {
		t.Fatalf("result %+v, %d jobs called", res, len(calls))
	}
	for jid, n := range calls {
		if n != 1 {
			t.Fatalf("%s performed %d times", jid, n)
		}
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	if !slices.Equal(left, []string{q[7]}) {
		t.Fatalf("queue = %q", left)
	}
	if sc, err := tb.rdb.ZScore(tb.ctx, "schedule", bad).Result(); err != nil || sc != 123.5 {
		t.Fatalf("bad scheduled job: %v %v", sc, err)
	}
	if n, _ := tb.rdb.ZCard(tb.ctx, "schedule").Result(); n != 1 {
		t.Fatalf("schedule has %d", n)
	}
	assertNoStealKeys(t, tb)
}

// Without KeepGoing, concurrent performs that had started finish and are
// removed (not pushed back); what had not started goes back.
func TestStealConcurrentFailureKeepsPerformedOnes(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	seedC(t, tb, 50)
	var mu sync.Mutex
	var done []string
	opts := stealOpts("C")
	opts.Concurrency = 4
	res, err := Steal(tb.ctx, tb.rdb, opts, func(_ context.Context, j *StolenJob) error {
		if j.Job.JID() == "q20" {
			return errors.New("boom")
		}
		mu.Lock()
		done = append(done, string(j.Raw))
		mu.Unlock()
		return nil
	})
	if !errors.Is(err, ErrStealFailed) || res.Performed != len(done) || res.Performed < 20 {
		t.Fatalf("err %v, result %+v, %d done", err, res, len(done))
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	if len(left)+len(done) != 50 {
		t.Fatalf("%d back + %d performed != 50", len(left), len(done))
	}
	for _, d := range done {
		if slices.Contains(left, d) {
			t.Fatalf("performed job pushed back: %s", d)
		}
	}
	assertNoStealKeys(t, tb)
}

// Several queues are stolen from, each keeping its other jobs in order.
func TestStealSeveralQueues(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	seedQueue(t, tb, bmJob("a1", "C", 1), bmJob("o1", "Other", 1))
	tb.rdb.LPush(tb.ctx, "queue:default", bmJob("d1", "C", 2), `{"class":"HardWorker","args":[],"jid":"h"}`)
	opts := stealOpts("C")
	opts.Queue, opts.Queues = "", []string{"background_migration", "default"}
	var got []string
	res, err := Steal(tb.ctx, tb.rdb, opts, func(_ context.Context, j *StolenJob) error {
		got = append(got, j.Job.JID())
		return nil
	})
	if err != nil || res.Stolen[SourceQueue] != 2 || !slices.Equal(got, []string{"a1", "d1"}) {
		t.Fatalf("%v %+v %v", got, res, err)
	}
	if n := tb.rdb.LLen(tb.ctx, "queue:default").Val() + tb.rdb.LLen(tb.ctx, "queue:background_migration").Val(); n != 2 {
		t.Fatalf("%d left", n)
	}
	assertNoStealKeys(t, tb)
}

// With PerformBatch, runs of jobs are performed together; a run holding a
// failing job is redone one by one, so with KeepGoing only that job goes
// back and every other job is performed exactly once.
func TestStealBatchesFallBackOneByOne(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	seedC(t, tb, 200)
	var mu sync.Mutex
	performed := map[string]int{}
	batches := 0
	opts := stealOpts("C")
	opts.Concurrency, opts.KeepGoing = 3, true
	opts.PerformBatch = func(_ context.Context, js []*StolenJob) error {
		mu.Lock()
		defer mu.Unlock()
		for _, j := range js {
			if j.Job.JID() == "q77" {
				return errors.New("boom") // all or none: nothing recorded
			}
		}
		batches++
		for _, j := range js {
			performed[j.Job.JID()]++
		}
		return nil
	}
	res, err := Steal(tb.ctx, tb.rdb, opts, func(_ context.Context, j *StolenJob) error {
		if j.Job.JID() == "q77" {
			return errors.New("boom")
		}
		mu.Lock()
		performed[j.Job.JID()]++
		mu.Unlock()
		return nil
	})
	var failures *StealFailures
	if !errors.As(err, &failures) || len(failures.Failed) != 1 || failures.Failed[0].JID != "q77" {
		t.Fatalf("err %v", err)
	}
	if res.Performed != 199 || len(performed) != 199 || batches < 2 {
		t.Fatalf("performed %d (%d distinct) in %d batches", res.Performed, len(performed), batches)
	}
	for jid, n := range performed {
		if n != 1 {
			t.Fatalf("%s performed %d times", jid, n)
		}
	}
	left, _ := tb.rdb.LRange(tb.ctx, "queue:background_migration", 0, -1).Result()
	if len(left) != 1 || !strings.Contains(left[0], `"q77"`) {
		t.Fatalf("queue = %q", left)
	}
	assertNoStealKeys(t, tb)
}

// ErrNoBatch turns runs off for the rest of the steal (jobs then start in
// order, one by one); a run whose commit may have happened is failed as a
// whole, not performed again at once.
func TestStealNoBatchAndUnknownOutcome(t *testing.T) {
	t.Parallel()
	t.Run("no batch", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, BrokerOptions{})
		seedC(t, tb, 100)
		var offered atomic.Int32
		var order []string
		opts := stealOpts("C")
		opts.Concurrency = 1
		opts.PerformBatch = func(context.Context, []*StolenJob) error {
			offered.Add(1)
			return ErrNoBatch
		}
		res, err := Steal(tb.ctx, tb.rdb, opts, func(_ context.Context, j *StolenJob) error {
			order = append(order, j.Job.JID())
			return nil
		})
		if err != nil || res.Performed != 100 || offered.Load() != 1 {
			t.Fatalf("%+v %v, offered %d runs", res, err, offered.Load())
		}
		for i, jid := range order {
			if jid != fmt.Sprintf("q%d", i) {
				t.Fatalf("job %d was %s", i, jid)
			}
		}
	})
	t.Run("unknown outcome", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, BrokerOptions{})
		seedC(t, tb, 100)
		var singles atomic.Int32
		opts := stealOpts("C")
		opts.Concurrency, opts.KeepGoing = 2, true
		var runs atomic.Int32
		opts.PerformBatch = func(_ context.Context, js []*StolenJob) error {
			if runs.Add(1) == 1 {
				return fmt.Errorf("%w: connection reset", ErrBatchOutcomeUnknown)
			}
			return nil
		}
		res, err := Steal(tb.ctx, tb.rdb, opts, func(context.Context, *StolenJob) error {
			singles.Add(1)
			return nil
		})
		var failures *StealFailures
		if !errors.As(err, &failures) || len(failures.Failed) == 0 || singles.Load() != 0 ||
			res.Performed+len(failures.Failed) != 100 || res.Returned != len(failures.Failed) {
			t.Fatalf("%+v %v; %d performed one by one", res, err, singles.Load())
		}
		if n := tb.rdb.LLen(tb.ctx, "queue:background_migration").Val(); int(n) != len(failures.Failed) {
			t.Fatalf("%d back in the queue, %d failed", n, len(failures.Failed))
		}
		assertNoStealKeys(t, tb)
	})
}
