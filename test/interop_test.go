package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

var jidRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

// rubyEntry is a sorted-set entry as Sidekiq's Ruby API sees it (api.rb entry_json).
type rubyEntry struct {
	JID              string            `json:"jid"`
	Klass            string            `json:"klass"`
	DisplayClass     string            `json:"display_class"`
	Queue            string            `json:"queue"`
	Args             []json.RawMessage `json:"args"`
	ArgsMatchInterop bool              `json:"args_match_interop"`
	Score            json.Number       `json:"score"`
	ErrorClass       *string           `json:"error_class"`
	ErrorMessage     *string           `json:"error_message"`
	RetryCount       *json.Number      `json:"retry_count"`
	FailedAtClass    string            `json:"failed_at_class"`
	Error            bool              `json:"error?"`
}

type rubyProcess struct {
	Identity       string      `json:"identity"`
	Hostname       string      `json:"hostname"`
	Pid            json.Number `json:"pid"`
	Tag            string      `json:"tag"`
	Labels         []string    `json:"labels"`
	Concurrency    json.Number `json:"concurrency"`
	Queues         []string    `json:"queues"`
	Busy           json.Number `json:"busy"`
	Quiet          string      `json:"quiet"`
	Stopping       bool        `json:"stopping"`
	BeatClass      string      `json:"beat_class"`
	StartedAtClass string      `json:"started_at_class"`
}

type rubySnapshot struct {
	Processes []rubyProcess `json:"processes"`
	Queues    map[string]struct {
		Size    json.Number `json:"size"`
		Latency json.Number `json:"latency"`
	} `json:"queues"`
	Retries   []rubyEntry            `json:"retries"`
	Dead      []rubyEntry            `json:"dead"`
	Scheduled []rubyEntry            `json:"scheduled"`
	Stats     map[string]json.Number `json:"stats"`
}

func (s rubySnapshot) process(t *testing.T, identity string) rubyProcess {
	t.Helper()
	for _, p := range s.Processes {
		if p.Identity == identity {
			return p
		}
	}
	t.Fatalf("Sidekiq::ProcessSet does not list %s; it lists %+v", identity, s.Processes)
	return rubyProcess{}
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// Ruby client → ferry worker: jobs pushed by Sidekiq::Client (single, bulk,
// scheduled, unknown class) are run by ferry; the failure ferry records is
// a retry entry Ruby's API reads, and Ruby's "Retry Now" hands it back to
// ferry.
func TestRubyClientToFerryWorker(t *testing.T) { eachSidekiq(t, testRubyClientToFerryWorker) }

func testRubyClientToFerryWorker(t *testing.T, rb sidekiqRuby) {
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)

	var pushed struct {
		Single    string   `json:"single"`
		Bulk      []string `json:"bulk"`
		Scheduled string   `json:"scheduled"`
		Failing   string   `json:"failing"`
	}
	rb.run(t, url, &pushed, "api.rb", "push_interop")
	if len(pushed.Bulk) != 50 {
		t.Fatalf("push_bulk returned %d jids, want 50", len(pushed.Bulk))
	}
	if n := llen(ctx, t, rdb, "queue:interop"); n != 52 {
		t.Fatalf("queue:interop has %d jobs after the Ruby pushes, want 52", n)
	}
	if n := zcard(ctx, t, rdb, "schedule"); n != 1 {
		t.Fatalf("schedule has %d entries, want 1", n)
	}
	// What Ruby wrote is what ferry must cope with: a bare 2**70.
	raws, _ := rdb.LRange(ctx, "queue:interop", 0, -1).Result()
	var sawBig bool
	for _, r := range raws {
		sawBig = sawBig || strings.Contains(r, `[1180591620717411303424,{"nested":[1,{"x":"y"}]},"<b>&"]`)
	}
	if !sawBig {
		t.Fatalf("no Ruby payload carries the big-integer args verbatim: %q", raws)
	}

	w := startFerryWorker(t, url, "--queues", "interop", "--concurrency", "5", "--poll-interval", "1s")
	testenv.Eventually(t, 30*time.Second, "ferry to run every Ruby job (queue and schedule empty, one retry entry, no private list)", func() bool {
		return llen(ctx, t, rdb, "queue:interop") == 0 && zcard(ctx, t, rdb, "schedule") == 0 &&
			zcard(ctx, t, rdb, "retry") == 1 && len(privateLists(ctx, t, rdb)) == 0
	})
	stopWorker(t, w, 30*time.Second)

	// 1 single + 50 bulk + 1 scheduled + 1 failing; stats are flushed at exit.
	if got := getInt(ctx, t, rdb, "stat:processed"); got != 53 {
		t.Errorf("stat:processed = %d, want 53", got)
	}
	if got := getInt(ctx, t, rdb, "stat:failed"); got != 1 {
		t.Errorf("stat:failed = %d, want 1", got)
	}
	day := time.Now().UTC().Format("2006-01-02")
	if got := getInt(ctx, t, rdb, "stat:processed:"+day); got != 53 {
		t.Errorf("stat:processed:%s = %d, want 53", day, got)
	}
	if n := zcard(ctx, t, rdb, "dead"); n != 0 {
		t.Errorf("dead set has %d entries, want 0", n)
	}

	// The retry entry, read by Sidekiq's Ruby API.
	var e rubyEntry
	rb.run(t, url, &e, "api.rb", "retry_entry", pushed.Failing)
	if e.Klass != "Nope::Missing" || deref(e.ErrorClass) != "NameError" || e.Queue != "interop" || !e.Error {
		t.Errorf("Ruby sees retry entry klass=%q error_class=%q queue=%q error?=%v, want Nope::Missing/NameError/interop/true",
			e.Klass, deref(e.ErrorClass), e.Queue, e.Error)
	}
	if e.RetryCount == nil || e.RetryCount.String() != "0" {
		t.Errorf("retry_count = %v, want 0", e.RetryCount)
	}
	if e.FailedAtClass != "Float" {
		t.Errorf("failed_at is a Ruby %s, want Float", e.FailedAtClass)
	}
	if !e.ArgsMatchInterop {
		t.Errorf("Ruby reads the retry entry's args as %s, want [2**70, {nested...}, \"<b>&\"] unchanged", e.Args)
	}
	if !strings.Contains(deref(e.ErrorMessage), "Nope::Missing") {
		t.Errorf("error_message %q does not name the class", deref(e.ErrorMessage))
	}
	score, _ := e.Score.Float64()
	if now := float64(time.Now().UnixNano()) / 1e9; score < now || score > now+60 {
		t.Errorf("retry score %f is not 15-25 s after the failure (now %f)", score, now)
	}

	// Ruby's "Retry Now" moves it back to its queue (retry_count - 1, as Sidekiq does).
	rb.run(t, url, nil, "api.rb", "retry_now", pushed.Failing)
	if n := zcard(ctx, t, rdb, "retry"); n != 0 {
		t.Fatalf("retry set has %d entries after Ruby's retry, want 0", n)
	}
	raws, _ = rdb.LRange(ctx, "queue:interop", 0, -1).Result()
	if len(raws) != 1 {
		t.Fatalf("queue:interop has %d jobs after Ruby's retry, want 1", len(raws))
	}
	j := jobJSON(t, raws[0])
	if j["jid"] != pushed.Failing || fmt.Sprint(j["retry_count"]) != "-1" || j["enqueued_at"] == nil {
		t.Fatalf("re-queued job = %s, want jid %s, retry_count -1 and enqueued_at", raws[0], pushed.Failing)
	}

	// ferry takes it again: the manual retry did not use up an attempt.
	w2 := startFerryWorker(t, url, "--queues", "interop", "--concurrency", "2")
	testenv.Eventually(t, 20*time.Second, "ferry to fail the re-queued job into the retry set again", func() bool {
		return zcard(ctx, t, rdb, "retry") == 1 && llen(ctx, t, rdb, "queue:interop") == 0 && len(privateLists(ctx, t, rdb)) == 0
	})
	stopWorker(t, w2, 30*time.Second)
	members, _ := rdb.ZRange(ctx, "retry", 0, -1).Result()
	j = jobJSON(t, members[0])
	if j["jid"] != pushed.Failing || fmt.Sprint(j["retry_count"]) != "0" {
		t.Errorf("second retry entry = %s, want jid %s with retry_count 0", members[0], pushed.Failing)
	}
}

// ferry → Ruby Sidekiq server: jobs from `ferry enqueue` (immediate and
// --in) are run by a real `sidekiq` process with their args intact.
func TestFerryEnqueueToRubyServer(t *testing.T) { eachSidekiq(t, testFerryEnqueueToRubyServer) }

func testFerryEnqueueToRubyServer(t *testing.T, rb sidekiqRuby) {
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)

	want := map[string]string{} // jid -> compact args JSON
	for _, c := range []struct{ args, extra string }{
		{`[1180591620717411303424, {"a":[1,2]}]`, ""},
		{`[{"deep":{"x":[true,null,1.5,-7]}}, "<b>&</b> é", []]`, "1s"},
	} {
		argv := []string{"enqueue", "RubyJob", c.args, "--queue", "rb"}
		if c.extra != "" {
			argv = append(argv, "--in", c.extra)
		}
		jid := mustFerry(t, url, argv...)
		if !jidRE.MatchString(jid) {
			t.Fatalf("ferry enqueue printed %q, want a 24-hex jid", jid)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, []byte(c.args)); err != nil {
			t.Fatal(err)
		}
		want[jid] = buf.String()
	}
	if llen(ctx, t, rdb, "queue:rb") != 1 || zcard(ctx, t, rdb, "schedule") != 1 {
		t.Fatalf("after ferry enqueue: queue:rb has %d, schedule %d; want 1 and 1",
			llen(ctx, t, rdb, "queue:rb"), zcard(ctx, t, rdb, "schedule"))
	}
	if ok, _ := rdb.SIsMember(ctx, "queues", "rb").Result(); !ok {
		t.Fatal(`ferry enqueue did not SADD "rb" to the queues set`)
	}

	sk := startProc(t, "sidekiq "+rb.version, childEnv("REDIS_URL="+url), rb.server,
		"-r", rubyDir+"/app.rb", "-q", "rb", "-c", "2", "-t", "5", "-g", "ferry-interop")
	testenv.Eventually(t, 45*time.Second, "the Ruby server to run both ferry jobs", func() bool {
		if sk.exited() {
			t.Fatalf("sidekiq exited early (%s)", sk.state())
		}
		return llen(ctx, t, rdb, "ruby:results") >= 2
	})
	results, _ := rdb.LRange(ctx, "ruby:results", 0, -1).Result()
	if len(results) != 2 {
		t.Fatalf("Ruby ran %d jobs, want 2: %q", len(results), results)
	}
	for _, r := range results {
		var got struct {
			JID  string          `json:"jid"`
			Args json.RawMessage `json:"args"`
		}
		if err := json.Unmarshal([]byte(r), &got); err != nil {
			t.Fatalf("result %q: %v", r, err)
		}
		w, ok := want[got.JID]
		if !ok {
			t.Errorf("Ruby ran an unexpected jid %s (%s)", got.JID, r)
			continue
		}
		if string(got.Args) != w {
			t.Errorf("Ruby received args %s for %s, want exactly %s", got.Args, got.JID, w)
		}
		delete(want, got.JID)
	}
	if zcard(ctx, t, rdb, "retry") != 0 || zcard(ctx, t, rdb, "dead") != 0 {
		t.Errorf("Ruby failed a ferry job: retry %v dead %v", rdb.ZRange(ctx, "retry", 0, -1).Val(), rdb.ZRange(ctx, "dead", 0, -1).Val())
	}
	stopWorker(t, sk, 30*time.Second)
}

// The Sidekiq Ruby API sees a ferry worker: ProcessSet (identity,
// concurrency, queues, tag, busy, quiet), quiet!/stop! through the signals
// list, Queue size/latency, and the retry and dead entries ferry wrote,
// including an invalid-JSON payload.
func TestSidekiqAPISeesFerry(t *testing.T) { eachSidekiq(t, testSidekiqAPISeesFerry) }

func testSidekiqAPISeesFerry(t *testing.T, rb sidekiqRuby) {
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	client := sidekiq.NewClient(rdb)

	w := startFerryWorker(t, url, "--queues", "x,y", "--concurrency", "7", "--tag", "interop-tag")
	id, info := waitIdentity(ctx, t, rdb, w)

	const garbage = `{"class":"Ferry::Noop","args":[1,` // truncated JSON
	rdb.SAdd(ctx, "queues", "x")
	rdb.LPush(ctx, "queue:x", garbage)
	deadJID, err := client.Push(ctx, "Nope::Missing", json.RawMessage(`[1]`), sidekiq.PushOptions{Queue: "x", Retry: sidekiq.RetryTimes(0)})
	if err != nil {
		t.Fatal(err)
	}
	retryJID, err := client.Push(ctx, "Nope::Missing", json.RawMessage(`[2]`), sidekiq.PushOptions{Queue: "y"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "ferry to move the garbage and retry:0 job to dead and the other failure to retry", func() bool {
		return zcard(ctx, t, rdb, "dead") == 2 && zcard(ctx, t, rdb, "retry") == 1 && len(privateLists(ctx, t, rdb)) == 0
	})

	// A queue ferry does not watch, to compare size and latency.
	args := []json.RawMessage{json.RawMessage(`[1]`), json.RawMessage(`[2]`), json.RawMessage(`[3]`)}
	if _, err := client.PushBulk(ctx, "Ferry::Noop", args, sidekiq.PushOptions{Queue: "parked"}); err != nil {
		t.Fatal(err)
	}
	oldest, _ := rdb.LIndex(ctx, "queue:parked", -1).Result()
	enq, _ := jobJSON(t, oldest)["enqueued_at"].(json.Number).Float64()

	var snap rubySnapshot
	rb.run(t, url, &snap, "api.rb", "snapshot", "parked")
	p := snap.process(t, id)
	if p.Concurrency.String() != "7" || !slices.Equal(p.Queues, []string{"x", "y"}) || p.Tag != "interop-tag" ||
		p.Busy.String() != "0" || p.Quiet != "false" || p.Stopping {
		t.Errorf("Ruby ProcessSet entry = %+v, want concurrency 7, queues [x y], tag interop-tag, busy 0, quiet false", p)
	}
	if p.Hostname != info.Hostname || p.Hostname == "" || p.Pid.String() != strconv.Itoa(w.pid()) {
		t.Errorf("Ruby ProcessSet hostname/pid = %s/%s, want %s/%d", p.Hostname, p.Pid, info.Hostname, w.pid())
	}
	if p.BeatClass != "Float" || p.StartedAtClass != "Float" {
		t.Errorf("beat is a %s and started_at a %s in Ruby, want Float", p.BeatClass, p.StartedAtClass)
	}
	pq := snap.Queues["parked"]
	if pq.Size.String() != "3" {
		t.Errorf("Sidekiq::Queue.new('parked').size = %s, want 3", pq.Size)
	}
	lat, _ := pq.Latency.Float64()
	if wantLat := float64(time.Now().UnixNano())/1e9 - enq; lat <= 0 || math.Abs(lat-wantLat) > 5 {
		t.Errorf("Sidekiq::Queue#latency = %f, want ≈ %f (now - oldest enqueued_at)", lat, wantLat)
	}
	if len(snap.Retries) != 1 || snap.Retries[0].JID != retryJID || deref(snap.Retries[0].ErrorClass) != "NameError" ||
		snap.Retries[0].Queue != "y" {
		t.Errorf("Sidekiq::RetrySet = %+v, want one NameError entry %s in queue y", snap.Retries, retryJID)
	}
	var sawGarbage, sawDead bool
	for _, d := range snap.Dead {
		switch {
		case len(d.Args) == 1 && string(d.Args[0]) == strconv.Quote(garbage):
			sawGarbage = true // Sidekiq shows unparseable payloads as their raw text
		case d.JID == deadJID:
			sawDead = deref(d.ErrorClass) == "NameError" && d.RetryCount != nil && d.RetryCount.String() == "0" && d.FailedAtClass == "Float"
		}
	}
	if !sawGarbage || !sawDead || len(snap.Dead) != 2 {
		t.Errorf("Sidekiq::DeadSet = %+v, want the invalid-JSON payload and NameError entry %s (retry_count 0, Float failed_at)", snap.Dead, deadJID)
	}
	if s := snap.Stats; s["retry_size"].String() != "1" || s["dead_size"].String() != "2" {
		t.Errorf("Sidekiq::Stats = %v, want retry_size 1, dead_size 2", s)
	}

	// Quiet from Ruby (LPUSH <identity>-signals TSTP): the next beat says so.
	rb.run(t, url, nil, "api.rb", "quiet", id)
	testenv.Eventually(t, 15*time.Second, "ferry's process hash to show quiet=true", func() bool {
		return rdb.HGet(ctx, id, "quiet").Val() == "true"
	})
	rb.run(t, url, &snap, "api.rb", "snapshot")
	if p := snap.process(t, id); !p.Stopping {
		t.Errorf("Ruby Process#stopping? = false after quiet!, want true (%+v)", p)
	}
	// A quiet worker no longer fetches: a job pushed now stays queued.
	if _, err := client.Push(ctx, "Ferry::Noop", json.RawMessage(`[]`), sidekiq.PushOptions{Queue: "x"}); err != nil {
		t.Fatal(err)
	}

	// Stop from Ruby: ferry exits cleanly and leaves the process set.
	rb.run(t, url, nil, "api.rb", "stop", id)
	if code := w.waitExit(t, 30*time.Second); code != 0 {
		t.Fatalf("ferry exited %d after Ruby's stop!, want 0", code)
	}
	if ok, _ := rdb.SIsMember(ctx, "processes", id).Result(); ok {
		t.Errorf("%s is still in the processes set after stop", id)
	}
	if n := llen(ctx, t, rdb, "queue:x"); n != 1 {
		t.Errorf("queue:x has %d jobs, want 1: a quiet worker must not fetch", n)
	}
	if pl := privateLists(ctx, t, rdb); len(pl) != 0 {
		t.Errorf("private lists left after stop: %v", pl)
	}
}

// The Sidekiq Web UI (6.4 and 7.2, rendered through Rack::MockRequest) shows
// ferry's process, retries, dead jobs, queues and scheduled jobs.
func TestSidekiqWebUIRendersFerry(t *testing.T) { eachSidekiq(t, testSidekiqWebUIRendersFerry) }

func testSidekiqWebUIRendersFerry(t *testing.T, rb sidekiqRuby) {
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	client := sidekiq.NewClient(rdb)

	w := startFerryWorker(t, url, "--queues", "web", "--concurrency", "3", "--tag", "webtag")
	id, info := waitIdentity(ctx, t, rdb, w)

	retryJID := mustFerry(t, url, "enqueue", "Nope::Missing", `[1180591620717411303424, "<script>x</script>"]`, "--queue", "web")
	deadJID := mustFerry(t, url, "enqueue", "Nope::Dead", `[{"k":"v"}]`, "--queue", "web", "--retry", "0")
	schedJID := mustFerry(t, url, "enqueue", "Ferry::Noop", `["scheduled"]`, "--queue", "web", "--in", "1h")
	parkedJIDs, err := client.PushBulk(ctx, "Ferry::Parked", []json.RawMessage{json.RawMessage(`[1]`), json.RawMessage(`[2]`)},
		sidekiq.PushOptions{Queue: "webparked"})
	if err != nil {
		t.Fatal(err)
	}
	rdb.SAdd(ctx, "queues", "web")
	rdb.LPush(ctx, "queue:web", "not json at all")
	// JSON that is no object, and invalid UTF-8 in a class name: one such
	// entry used to make the Morgue fail for every job.
	rdb.LPush(ctx, "queue:web", "null", "{\"class\":\"Bad\xff\xfeName\",\"args\":[],\"jid\":\"ee0000000000000000000002\",\"retry\":0}")
	testenv.Eventually(t, 20*time.Second, "ferry to record one retry and four dead entries", func() bool {
		return zcard(ctx, t, rdb, "retry") == 1 && zcard(ctx, t, rdb, "dead") == 4 && len(privateLists(ctx, t, rdb)) == 0
	})
	// Make sure the Busy page reads a fresh beat.
	testenv.Eventually(t, 10*time.Second, "a heartbeat", func() bool { return rdb.Exists(ctx, id).Val() == 1 })

	key := func(set, jid string) string {
		zs, err := rdb.ZRangeWithScores(ctx, set, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			if strings.Contains(z.Member.(string), jid) {
				return strconv.FormatFloat(z.Score, 'f', -1, 64) + "-" + jid
			}
		}
		t.Fatalf("%s not in %s", jid, set)
		return ""
	}
	retryKey, deadKey, schedKey := key("retry", retryJID), key("dead", deadJID), key("schedule", schedJID)

	pages := map[string][]string{ // path -> strings the body must contain
		"/":                      {"Dashboard", "Processed"},
		"/busy":                  {info.Hostname + ":" + strconv.Itoa(w.pid()), "webtag", id},
		"/retries":               {retryJID, "Nope::Missing"},
		"/retries/" + retryKey:   {retryJID, "Nope::Missing", "NameError", "1180591620717411303424", "&lt;script&gt;"},
		"/morgue":                {deadJID, "Nope::Dead", "not json at all", "Ferry::InvalidPayload", "ee0000000000000000000002"},
		"/morgue/" + deadKey:     {deadJID, "Nope::Dead", "NameError"},
		"/queues":                {"webparked"},
		"/queues/webparked":      {parkedJIDs[0], parkedJIDs[1], "Ferry::Parked"},
		"/scheduled":             {schedJID, "Ferry::Noop"},
		"/scheduled/" + schedKey: {schedJID, "Ferry::Noop"},
	}
	paths := make([]string, 0, len(pages))
	for p := range pages {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var res map[string]struct {
		Status   int     `json:"status"`
		Location *string `json:"location"`
		Body     string  `json:"body"`
	}
	rb.run(t, url, &res, "web.rb", paths...)
	for _, path := range paths {
		r, ok := res[path]
		if !ok {
			t.Errorf("GET %s: no response", path)
			continue
		}
		if r.Status != 200 {
			t.Errorf("GET %s: status %d (location %v), want 200; body:\n%.2000s", path, r.Status, deref(r.Location), r.Body)
			continue
		}
		for _, want := range pages[path] {
			if !strings.Contains(r.Body, want) {
				t.Errorf("GET %s: body does not contain %q", path, want)
			}
		}
		if strings.Contains(r.Body, "<script>x</script>") {
			t.Errorf("GET %s: job args are not HTML-escaped", path)
		}
	}
	stopWorker(t, w, 30*time.Second)
}

var _ = redis.Nil
