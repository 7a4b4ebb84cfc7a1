package sidekiq

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
	// Both on the Busy page, with a job each (the dead one's hashes
	// have not expired yet).
	for _, id := range []string{dead, live} {
		rdb.SAdd(ctx, keyProcesses, id)
		rdb.HSet(ctx, id, "info", `{}`)
		rdb.HSet(ctx, workKey(id), "t1", `{}`)
		rdb.HSet(ctx, workersKey(id), "t1", `{}`)
	}
	missingLongAgo(t, tb, dead, unreg, "stager:5:eeeeeeeeeeee", live, tb.broker.Identity())

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
	// Pushed back to the right end (next to run), with the rescue counted
	// and its time kept.
	if want := `{"class":"A","args":[1],"jid":"j1","queue":"q","ferry_recovered":1,"ferry_recovered_at":[` +
		formatFloatTime(epoch(fixedNow)) + `]}`; q[0] != want && q[1] != want {
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
	// The dead process is off the Busy page (its jobs are back in their
	// queues); the live one stays.
	if rdb.SIsMember(ctx, keyProcesses, dead).Val() || rdb.Exists(ctx, dead, workKey(dead), workersKey(dead)).Val() != 0 ||
		!rdb.SIsMember(ctx, keyProcesses, live).Val() || rdb.Exists(ctx, live, workKey(live)).Val() != 2 {
		t.Errorf("processes %v; dead's hashes %d, live's %d", rdb.SMembers(ctx, keyProcesses).Val(),
			rdb.Exists(ctx, dead, workKey(dead), workersKey(dead)).Val(), rdb.Exists(ctx, live, workKey(live)).Val())
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
	// Sightings of recovered processes are forgotten; a live one's too.
	if got := rdb.HKeys(ctx, keyMissingSince).Val(); len(got) != 1 || got[0] != tb.broker.Identity() {
		t.Errorf("missing-since = %v, want only our own (never looked at) entry", got)
	}
}

// missingLongAgo records ids as missing since long before any grace
// period, as if earlier recovery passes had seen them without alive keys.
func missingLongAgo(t *testing.T, tb *testBundle, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := tb.rdb.HSet(tb.ctx, keyMissingSince, id, 1).Err(); err != nil {
			t.Fatal(err)
		}
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
		missingLongAgo(t, tb, "x:1:"+itoa(i))
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
		if e.str("error_class") != "Ferry::PoisonPill" || !strings.Contains(e.str("error_message"), "3 worker processes that died within 72h") ||
			!e.Has("failed_at") {
			t.Errorf("poison entry = %s", m)
		}
		if e.JID() == "p2" && !e.Has("retried_at") {
			t.Errorf("poison entry with retry_count lacks retried_at: %s", m)
		}
	}
}

// TestRecoverPoisonPillWindow: only rescues within RecoveryWindow (72 h by
// default) count towards MaxRecoveries (3), as in Sidekiq Pro; rescues
// counted by an older ferry, which kept no times, count as recent.
func TestRecoverPoisonPillWindow(t *testing.T) {
	t.Parallel()
	now := fixedNow
	tb := setup(t, BrokerOptions{Now: func() time.Time { return now }})
	ctx, rdb := tb.ctx, tb.rdb
	ago := func(h float64) string { return formatFloatTime(epoch(now) - h*3600) }
	at := func(hours ...float64) string {
		s := make([]string, len(hours))
		for i, h := range hours {
			s[i] = ago(h)
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	cases := []struct {
		job, want string // want: where it ends up, "requeued" or "dead"
		wantCount int64
		wantAt    string // ferry_recovered_at afterwards
	}{
		// Three rescues long ago: outside the window, so run again and
		// counted as the first recent one.
		{`{"class":"A","args":[],"jid":"old","ferry_recovered":3,"ferry_recovered_at":` + at(24*30, 100, 72.01) + `}`,
			"requeued", 1, at(0)},
		// Three rescues within the window plus this one: a poison pill.
		{`{"class":"A","args":[],"jid":"recent","ferry_recovered":3,"ferry_recovered_at":` + at(71.99, 10, 1) + `}`,
			"dead", 4, at(71.99, 10, 1, 0)},
		// Two of three still recent: run again.
		{`{"class":"A","args":[],"jid":"mixed","ferry_recovered":3,"ferry_recovered_at":` + at(100, 71, 1) + `}`,
			"requeued", 3, at(71, 1, 0)},
		// Written by an older ferry: its rescues count as now.
		{`{"class":"A","args":[],"jid":"legacy","ferry_recovered":3}`, "dead", 4, at(0, 0, 0, 0)},
		{`{"class":"A","args":[],"jid":"legacy2","ferry_recovered":2}`, "requeued", 3, at(0, 0, 0)},
		// One time kept, then an older ferry rescued it again (count 2):
		// that rescue's time is unknown, so it counts as now.
		{`{"class":"A","args":[],"jid":"rolling","ferry_recovered":2,"ferry_recovered_at":` + at(200) + `}`,
			"requeued", 2, at(0, 0)},
		// A time far ahead (milliseconds, garbage) counts as now, so it
		// ages out with the window instead of counting forever.
		{`{"class":"A","args":[],"jid":"future","ferry_recovered":1,"ferry_recovered_at":[1.7e12]}`,
			"requeued", 2, at(0, 0)},
		// A garbage negative count adds no rescues.
		{`{"class":"A","args":[],"jid":"negative","ferry_recovered":-9223372036854775808,"ferry_recovered_at":` + at(1) + `}`,
			"requeued", 2, at(1, 0)},
	}
	for i, tc := range cases {
		rdb.LPush(ctx, inflightKey("w:1:"+itoa(i), "q"), tc.job)
		missingLongAgo(t, tb, "w:1:"+itoa(i))
	}
	res, err := tb.broker.RecoverOrphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Killed != 2 || res.Requeued != 6 {
		t.Errorf("result = %+v, want 2 killed, 6 requeued", res)
	}
	found := map[string]*Job{}
	where := map[string]string{}
	for place, list := range map[string][]string{
		"requeued": rdb.LRange(ctx, "queue:q", 0, -1).Val(),
		"dead":     rdb.ZRange(ctx, "dead", 0, -1).Val(),
	} {
		for _, m := range list {
			j := mustParse(t, m)
			found[j.JID()], where[j.JID()] = j, place
		}
	}
	for _, tc := range cases {
		jid := mustParse(t, tc.job).JID()
		got := found[jid]
		if got == nil || where[jid] != tc.want {
			t.Errorf("%s: found %q, want %s", jid, where[jid], tc.want)
			continue
		}
		if n, _ := got.Int(recoveredKey); n != tc.wantCount || string(got.Get(recoveredAtKey)) != tc.wantAt {
			t.Errorf("%s: ferry_recovered %d, ferry_recovered_at %s; want %d, %s",
				jid, n, got.Get(recoveredAtKey), tc.wantCount, tc.wantAt)
		}
		if tc.want == "dead" && !strings.Contains(got.str("error_message"),
			itoa(int(tc.wantCount))+" worker processes that died within 72h") {
			t.Errorf("%s: error_message %q", jid, got.str("error_message"))
		}
	}
}

func TestRecoveryWindowOption(t *testing.T) {
	t.Parallel()
	if _, err := NewBroker(dummyRedis(t), BrokerOptions{RecoveryWindow: -time.Hour}); err == nil ||
		!strings.Contains(err.Error(), "RecoveryWindow") {
		t.Errorf("NewBroker(RecoveryWindow -1h) = %v, want an error", err)
	}
	tb := setup(t, BrokerOptions{MaxRecoveries: 1, RecoveryWindow: 90 * time.Minute})
	ctx, rdb := tb.ctx, tb.rdb
	t0 := epoch(fixedNow)
	rdb.LPush(ctx, inflightKey("w:1:a", "q"),
		`{"class":"A","args":[],"jid":"out","ferry_recovered":1,"ferry_recovered_at":[`+formatFloatTime(t0-2*3600)+`]}`)
	rdb.LPush(ctx, inflightKey("w:1:b", "q"),
		`{"class":"A","args":[],"jid":"in","ferry_recovered":1,"ferry_recovered_at":[`+formatFloatTime(t0-3600)+`]}`)
	missingLongAgo(t, tb, "w:1:a", "w:1:b")
	if res, err := tb.broker.RecoverOrphans(ctx); err != nil || res.Killed != 1 || res.Requeued != 1 {
		t.Fatalf("result = %+v, %v; want 1 killed, 1 requeued", res, err)
	}
	if q := rdb.LRange(ctx, "queue:q", 0, -1).Val(); len(q) != 1 || mustParse(t, q[0]).JID() != "out" {
		t.Errorf("queue:q = %v, want only the job rescued 2h ago", q)
	}
	d := rdb.ZRange(ctx, "dead", 0, -1).Val()
	if len(d) != 1 || !strings.Contains(mustParse(t, d[0]).str("error_message"), "2 worker processes that died within 90m") {
		t.Errorf("dead = %v", d)
	}
}

func TestRecoveryLock(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	tb.rdb.Set(tb.ctx, keyRecoveryLock, "someone-else", time.Minute)
	tb.rdb.LPush(tb.ctx, inflightKey("dead:1:x", "q"), `{"class":"A","args":[]}`)
	missingLongAgo(t, tb, "dead:1:x")
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

// A process whose alive key is missing is recovered only once it has been
// missing for the grace period without a break: a refresh in between (a
// live process re-creating its key after an empty Redis restart) starts
// the count again.
func TestRecoveryGrace(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{RecoveryGrace: time.Hour})
	ctx, rdb := tb.ctx, tb.rdb
	other, err := NewBroker(rdb, BrokerOptions{Identity: "other:2:bbbbbbbbbbbb"})
	if err != nil {
		t.Fatal(err)
	}
	rdb.LPush(ctx, inflightKey(other.Identity(), "q"), `{"class":"A","args":[1]}`)

	res, err := tb.broker.RecoverOrphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Processes != 0 || res.Waiting != 1 || res.RetryIn <= 59*time.Minute || res.RetryIn > time.Hour {
		t.Errorf("first sighting: %+v, want 1 waiting, retry in about an hour", res)
	}
	if rdb.LLen(ctx, inflightKey(other.Identity(), "q")).Val() != 1 || !rdb.HExists(ctx, keyMissingSince, other.Identity()).Val() {
		t.Fatal("first sighting recovered the list, or did not record the sighting")
	}
	// The process comes back: its heartbeat clears the sighting.
	if _, err := other.Heartbeat(ctx, ProcessInfo{}, BeatState{}); err != nil {
		t.Fatal(err)
	}
	if rdb.HExists(ctx, keyMissingSince, other.Identity()).Val() {
		t.Error("a heartbeat did not clear the sighting")
	}
	if other.LastAliveRefresh().IsZero() {
		t.Error("LastAliveRefresh not set by a heartbeat")
	}
	if res, err := tb.broker.RecoverOrphans(ctx); err != nil || res.Waiting != 0 || res.Processes != 0 {
		t.Errorf("alive process: %+v, %v", res, err)
	}

	// Gone again, seen missing long ago: recovered.
	rdb.Del(ctx, aliveKey(other.Identity()))
	missingLongAgo(t, tb, other.Identity())
	if res, err := tb.broker.RecoverOrphans(ctx); err != nil || res.Processes != 1 || res.Requeued != 1 {
		t.Errorf("after the grace: %+v, %v", res, err)
	}
	if rdb.HExists(ctx, keyMissingSince, other.Identity()).Val() {
		t.Error("sighting kept after recovery")
	}
}

// Recovery moves a job only while its owner is still missing: a process
// that refreshes its liveness between the pass's decision and the move
// keeps its jobs.
func TestRecoveryStopsWhenOwnerReturns(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	ctx, rdb := tb.ctx, tb.rdb
	id := "back:3:cccccccccccc"
	list := inflightKey(id, "q")
	rdb.LPush(ctx, list, `{"class":"A","args":[1]}`, `{"class":"A","args":[2]}`)
	rdb.RPush(ctx, stagingKey(id), `{"class":"A","args":[3],"queue":"s"}`)

	for name, comeBack := range map[string]func(){
		"alive key back":     func() { rdb.Set(ctx, aliveKey(id), "1", time.Minute) },
		"sighting cleared":   func() { rdb.HDel(ctx, keyMissingSince, id) },
		"fetch refreshed it": func() { fetchAs(t, tb, id) },
	} {
		missingLongAgo(t, tb, id)
		rdb.Del(ctx, aliveKey(id))
		comeBack()
		var res RecoveryResult
		if err := tb.broker.recoverProcess(ctx, id, []string{"q"}, &res); !errors.Is(err, errOwnerBack) {
			t.Errorf("%s: err = %v, want errOwnerBack", name, err)
		}
		if rdb.LLen(ctx, list).Val() != 2 || rdb.LLen(ctx, stagingKey(id)).Val() != 1 || rdb.Exists(ctx, "queue:q", "queue:s").Val() != 0 {
			t.Errorf("%s: jobs of a process that came back were moved", name)
		}
	}
}

// fetchAs runs one (empty) fetch as process id.
func fetchAs(t *testing.T, tb *testBundle, id string) {
	t.Helper()
	b, err := NewBroker(tb.rdb, BrokerOptions{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.NewFetcher([]WeightedQueue{{Name: "empty"}}).TryFetch(tb.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if b.LastAliveRefresh().IsZero() {
		t.Error("LastAliveRefresh not set by a fetch")
	}
}

// Identities whose process hash expired (killed without a clean stop)
// leave the processes set, at most once a minute across the cluster, as
// Sidekiq 7's poller prunes them: they stretch every poll interval.
func TestPruneProcesses(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Identity: "me:1:aaaaaaaaaaaa"})
	ctx, rdb := tb.ctx, tb.rdb
	rdb.SAdd(ctx, keyProcesses, "gone:2:bbbbbbbbbbbb", "gone:3:cccccccccccc", "live:4:dddddddddddd")
	rdb.HSet(ctx, "live:4:dddddddddddd", "info", `{"hostname":"live"}`)
	if n := tb.broker.ProcessCount(ctx); n != 3 {
		t.Fatalf("ProcessCount before = %d", n)
	}
	n, err := tb.broker.PruneProcesses(ctx)
	if err != nil || n != 2 {
		t.Fatalf("PruneProcesses = %d, %v; want 2", n, err)
	}
	if got := rdb.SMembers(ctx, keyProcesses).Val(); len(got) != 1 || got[0] != "live:4:dddddddddddd" {
		t.Fatalf("processes = %v", got)
	}
	if ttl := rdb.TTL(ctx, keyProcessCleanup).Val(); ttl <= 0 || ttl > processCleanupEvery {
		t.Fatalf("%s TTL %v", keyProcessCleanup, ttl)
	}
	// Within the minute nobody prunes again (Sidekiq's own processes
	// included: they read the same key).
	rdb.SAdd(ctx, keyProcesses, "gone:5:eeeeeeeeeeee")
	if n, err := tb.broker.PruneProcesses(ctx); err != nil || n != 0 || rdb.SCard(ctx, keyProcesses).Val() != 2 {
		t.Fatalf("second prune within the minute: %d, %v", n, err)
	}
}
