package sidekiq

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"
)

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Identity: "vm:10777:2e65a26378c0"})
	ctx, rdb, id := tb.ctx, tb.rdb, "vm:10777:2e65a26378c0"
	info := ProcessInfo{Hostname: "vm", StartedAt: 1795272965.7642062, Pid: 10777, Tag: "probe",
		Concurrency: 3, Queues: []string{"default", "go"}, Version: "ferry 1"}
	payload := `{"class":"A","args":["<&>"],"jid":"j1"}`
	rdb.LPush(ctx, "vm:10777:2e65a26378c0-signals", "TSTP", "TTIN") // TSTP sent first
	sigs, err := tb.broker.Heartbeat(ctx, info, BeatState{
		Busy: 1, Quiet: true, Processed: 7, Failed: 2, RSSKB: 30096,
		Work: map[string]WorkEntry{"3": {Queue: "go", Payload: []byte(payload), RunAt: time.Unix(1795272992, 5e8)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sigs, []string{"TSTP", "TTIN"}) {
		t.Errorf("signals = %v, want [TSTP TTIN] in the order sent", sigs)
	}
	if rdb.Exists(ctx, id+"-signals").Val() != 0 {
		t.Error("signals not popped")
	}

	h := rdb.HGetAll(ctx, id).Val()
	var gotInfo map[string]any
	if err := json.Unmarshal([]byte(h["info"]), &gotInfo); err != nil {
		t.Fatalf("info: %v", err)
	}
	for k, want := range map[string]any{"hostname": "vm", "started_at": 1795272965.7642062, "pid": 10777.0, "tag": "probe",
		"concurrency": 3.0, "identity": id, "version": "ferry 1", "embedded": false} {
		if gotInfo[k] != want {
			t.Errorf("info.%s = %v, want %v", k, gotInfo[k], want)
		}
	}
	if qs, ok := gotInfo["queues"].([]any); !ok || len(qs) != 2 {
		t.Errorf("info.queues = %v", gotInfo["queues"])
	}
	if ls, ok := gotInfo["labels"].([]any); !ok || len(ls) != 0 {
		t.Errorf("info.labels = %v, want []", gotInfo["labels"])
	}
	beat, err := strconv.ParseFloat(h["beat"], 64)
	if err != nil || math.Abs(beat-epoch(fixedNow)) > 1e-5 || !containsDot(h["beat"]) {
		t.Errorf("beat = %q", h["beat"])
	}
	if h["busy"] != "1" || h["quiet"] != "true" || h["rss"] != "30096" || h["concurrency"] != "3" {
		t.Errorf("process hash = %v", h)
	}
	if _, err := strconv.Atoi(h["rtt_us"]); err != nil {
		t.Errorf("rtt_us = %q", h["rtt_us"])
	}
	if ttl := rdb.TTL(ctx, id).Val(); ttl <= 55*time.Second || ttl > 60*time.Second {
		t.Errorf("process TTL = %s", ttl)
	}
	if !rdb.SIsMember(ctx, "processes", id).Val() {
		t.Error("not in processes")
	}
	for _, key := range []string{id + ":workers", id + ":work"} {
		w := rdb.HGetAll(ctx, key).Val()
		var e struct {
			Queue   string          `json:"queue"`
			Payload json.RawMessage `json:"payload"`
			RunAt   json.RawMessage `json:"run_at"`
		}
		if err := json.Unmarshal([]byte(w["3"]), &e); err != nil {
			t.Fatalf("%s: %v (%v)", key, err, w)
		}
		var p string
		if json.Unmarshal(e.Payload, &p) != nil || p != payload {
			t.Errorf("%s payload = %s, want the raw job as a string", key, e.Payload)
		}
		if e.Queue != "go" || string(e.RunAt) != "1795272992" {
			t.Errorf("%s entry = %s", key, w["3"])
		}
		if ttl := rdb.TTL(ctx, key).Val(); ttl <= 55*time.Second || ttl > 60*time.Second {
			t.Errorf("%s TTL = %s", key, ttl)
		}
	}
	day := fixedNow.UTC().Format("2006-01-02")
	for key, want := range map[string]string{"stat:processed": "7", "stat:failed": "2",
		"stat:processed:" + day: "7", "stat:failed:" + day: "2"} {
		if got := rdb.Get(ctx, key).Val(); got != want {
			t.Errorf("%s = %q, want %s", key, got, want)
		}
	}
	for _, key := range []string{"stat:processed:" + day, "stat:failed:" + day} {
		if ttl := rdb.TTL(ctx, key).Val(); ttl < 157_679_000*time.Second || ttl > 157_680_000*time.Second {
			t.Errorf("%s TTL = %s, want 5 years", key, ttl)
		}
	}
	if rdb.TTL(ctx, "stat:processed").Val() != -1 {
		t.Error("stat:processed has a TTL")
	}
	if alive, _ := ProcessAlive(ctx, rdb, id); !alive {
		t.Error("not alive after a beat")
	}

	// Second beat: quiet false, no work, stats add up; no signals.
	sigs, err = tb.broker.Heartbeat(ctx, info, BeatState{Processed: 3})
	if err != nil || len(sigs) != 0 {
		t.Fatal(sigs, err)
	}
	if rdb.HGet(ctx, id, "quiet").Val() != "false" || rdb.HGet(ctx, id, "busy").Val() != "0" {
		t.Error("second beat: quiet/busy wrong")
	}
	if rdb.Exists(ctx, id+":work", id+":workers").Val() != 0 {
		t.Error("work hashes not cleared when idle")
	}
	if rdb.Get(ctx, "stat:processed").Val() != "10" {
		t.Errorf("stat:processed = %s, want 10", rdb.Get(ctx, "stat:processed").Val())
	}

	// Unregister: SREM + UNLINK; the process hash itself expires.
	if err := tb.broker.Unregister(ctx, info.Queues); err != nil {
		t.Fatal(err)
	}
	if rdb.SIsMember(ctx, "processes", id).Val() || rdb.HExists(ctx, keyFetchers, id).Val() {
		t.Error("still registered after Unregister")
	}
	if alive, _ := ProcessAlive(ctx, rdb, id); alive {
		t.Error("alive after Unregister")
	}
	if rdb.Exists(ctx, id).Val() != 1 {
		t.Error("process hash deleted; Sidekiq lets it expire")
	}
}

func TestSignalAndFlushStats(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	if err := tb.broker.Signal(tb.ctx, "other:1:abc", "TERM"); err != nil {
		t.Fatal(err)
	}
	if got := tb.rdb.LRange(tb.ctx, "other:1:abc-signals", 0, -1).Val(); !slices.Equal(got, []string{"TERM"}) {
		t.Errorf("signals = %v", got)
	}
	if ttl := tb.rdb.TTL(tb.ctx, "other:1:abc-signals").Val(); ttl <= 0 || ttl > 60*time.Second {
		t.Errorf("signals TTL = %s", ttl)
	}
	if err := tb.broker.FlushStats(tb.ctx, 5, 0); err != nil {
		t.Fatal(err)
	}
	if tb.rdb.Get(tb.ctx, "stat:processed").Val() != "5" || tb.rdb.Exists(tb.ctx, "stat:failed").Val() != 0 {
		t.Error("FlushStats wrong")
	}
}

func TestUnregisterKeepsRegistrationWithWork(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{})
	id := tb.broker.Identity()
	if err := tb.broker.Register(tb.ctx, []string{"q"}); err != nil {
		t.Fatal(err)
	}
	tb.rdb.LPush(tb.ctx, inflightKey(id, "q"), `{"class":"A","args":[]}`)
	if err := tb.broker.Unregister(tb.ctx, []string{"q"}); err != nil {
		t.Fatal(err)
	}
	if !tb.rdb.HExists(tb.ctx, keyFetchers, id).Val() {
		t.Error("registration dropped while the private list still holds a job")
	}
}

func containsDot(s string) bool {
	for _, c := range s {
		if c == '.' {
			return true
		}
	}
	return false
}
