package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

var sidekiq7Check struct {
	once sync.Once
	rb7  string
	skip string
}

// requireSidekiq7 returns the rb7 command (Debian's Ruby with the real
// Sidekiq 7.2.4 from ../shared/sidekiq7) or skips the test: a plain clone
// of the project does not have that folder.
func requireSidekiq7(t testing.TB) string {
	t.Helper()
	sidekiq7Check.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			sidekiq7Check.skip = err.Error()
			return
		}
		rb7 := filepath.Join(filepath.Dir(root), "shared", "sidekiq7", "rb7")
		if _, err := os.Stat(rb7); err != nil {
			sidekiq7Check.skip = "Sidekiq 7.2 is not available (" + rb7 + " is missing; it ships beside the project, not in it)"
			return
		}
		out, err := exec.Command(rb7, "-e", `require "sidekiq"; require "sidekiq/web"; require "sidekiq/metrics/query"`).CombinedOutput()
		if err != nil {
			sidekiq7Check.skip = "Sidekiq 7.2 does not load (" + err.Error() + ": " + strings.TrimSpace(string(out)) +
				"); install Debian's ruby-rack and ruby-concurrent"
			return
		}
		sidekiq7Check.rb7 = rb7
	})
	if sidekiq7Check.skip != "" {
		t.Skip(sidekiq7Check.skip)
	}
	return sidekiq7Check.rb7
}

// sidekiqRuby is one Ruby Sidekiq the interop tests run against.
type sidekiqRuby struct {
	version string // "6.4" (Debian's ruby-sidekiq) or "7.2" (../shared/sidekiq7)
	ruby    string // Ruby with that Sidekiq on its load path
	server  string // its `sidekiq` server command
}

// run runs a test/ruby script with this Sidekiq (see runRubyWith).
func (s sidekiqRuby) run(t testing.TB, redisURL string, out any, script string, args ...string) {
	t.Helper()
	runRubyWith(t, s.ruby, redisURL, out, script, args...)
}

// eachSidekiq runs test as parallel subtests "6.4" and "7.2", one per
// Ruby Sidekiq; each skips, saying why, when its Sidekiq is not installed.
func eachSidekiq(t *testing.T, test func(t *testing.T, rb sidekiqRuby)) {
	t.Run("6.4", func(t *testing.T) {
		requireRuby(t)
		t.Parallel()
		test(t, sidekiqRuby{version: "6.4", ruby: "ruby", server: "sidekiq"})
	})
	t.Run("7.2", func(t *testing.T) {
		rb7 := requireSidekiq7(t)
		t.Parallel()
		test(t, sidekiqRuby{version: "7.2", ruby: rb7, server: filepath.Join(filepath.Dir(rb7), "sidekiq7")})
	})
}

// metricsTotal sums a field of ferry's 7.x minute hashes ("j|YYYYMMDD|H:M").
func metricsTotal(t *testing.T, url, field string) int {
	t.Helper()
	ctx := testenv.Context(t)
	rdb := redisFor(t, url)
	n := 0
	for _, k := range keysMatching(ctx, t, rdb, "j|20??????|*") {
		v, _ := strconv.Atoi(rdb.HGet(ctx, k, field).Val())
		n += v
	}
	return n
}

// Real Sidekiq 7.2.4 reads ferry's process (weights, version) through
// Sidekiq::ProcessSet and its Busy page, and ferry's job metrics through
// Sidekiq::Metrics::Query and its Metrics pages.
func TestSidekiq7SeesFerryWeightsAndMetrics(t *testing.T) {
	rb7 := requireSidekiq7(t)
	t.Parallel()
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	client := sidekiq.NewClient(rdb)

	w := startFerryWorker(t, url, "--queues", "m7a:3,m7b:1", "--concurrency", "4", "--tag", "m7")
	id, _ := waitIdentity(ctx, t, rdb, w)

	noop := make([]json.RawMessage, 6)
	for i := range noop {
		noop[i] = json.RawMessage("[" + strconv.Itoa(i) + "]")
	}
	if _, err := client.PushBulk(ctx, "Ferry::Noop", noop, sidekiq.PushOptions{Queue: "m7a"}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // bad args for a class ferry runs: a failure Sidekiq's tracker counts
		if _, err := client.Push(ctx, "BackgroundMigrationWorker", json.RawMessage(`[1]`),
			sidekiq.PushOptions{Queue: "m7b", Retry: sidekiq.RetryTimes(0)}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "ferry to run the jobs and flush their metrics", func() bool {
		return metricsTotal(t, url, "Ferry::Noop|p") == 6 && metricsTotal(t, url, "BackgroundMigrationWorker|p") == 2
	})

	var m struct {
		Version string                            `json:"version"`
		Top     map[string]map[string]json.Number `json:"top"`
		Job     struct {
			Totals    map[string]json.Number `json:"totals"`
			Histogram []int                  `json:"histogram"`
		} `json:"job"`
	}
	runRubyWith(t, rb7, url, &m, "metrics.rb", "Ferry::Noop")
	if m.Version != "7.2.4" {
		t.Fatalf("metrics.rb ran Sidekiq %s, want 7.2.4", m.Version)
	}
	if n, bm := m.Top["Ferry::Noop"], m.Top["BackgroundMigrationWorker"]; n["p"] != "6" || n["f"] != "" || bm["p"] != "2" || bm["f"] != "2" {
		t.Errorf("Sidekiq::Metrics::Query#top_jobs totals = %v, want Ferry::Noop p 6 (no failures), BackgroundMigrationWorker p 2 f 2", m.Top)
	}
	hist := 0
	for _, n := range m.Job.Histogram {
		hist += n
	}
	if m.Job.Totals["p"] != "6" || hist != 6 || len(m.Job.Histogram) != 26 || m.Job.Histogram[25] != 6 {
		// for_job reverses the buckets: the last is "under 20 ms"
		t.Errorf("for_job(Ferry::Noop) totals %v, histogram %v; want p 6 and six runs under 20 ms", m.Job.Totals, m.Job.Histogram)
	}

	var snap struct {
		Processes []struct {
			Identity string           `json:"identity"`
			Weights  []map[string]int `json:"weights"`
			Version  string           `json:"version"`
			Queues   []string         `json:"queues"`
		} `json:"processes"`
	}
	runRubyWith(t, rb7, url, &snap, "api.rb", "snapshot")
	found := false
	for _, p := range snap.Processes {
		if p.Identity != id {
			continue
		}
		found = true
		if len(p.Weights) != 1 || p.Weights[0]["m7a"] != 3 || p.Weights[0]["m7b"] != 1 || !strings.HasPrefix(p.Version, "ferry") ||
			strings.Join(p.Queues, ",") != "m7a,m7b" {
			t.Errorf("Sidekiq 7 ProcessSet entry = %+v, want weights [{m7a:3, m7b:1}], queues [m7a m7b], a ferry version", p)
		}
	}
	if !found {
		t.Fatalf("Sidekiq 7 ProcessSet does not list %s: %+v", id, snap.Processes)
	}

	pages := map[string][]string{
		"/busy":                {id, "m7a: 3, m7b: 1", "ferry"},
		"/metrics":             {"Ferry::Noop", "BackgroundMigrationWorker"},
		"/metrics/Ferry::Noop": {"Ferry::Noop"},
	}
	var res map[string]struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}
	runRubyWith(t, rb7, url, &res, "web.rb", "/busy", "/metrics", "/metrics/Ferry::Noop")
	for path, wants := range pages {
		r := res[path]
		if r.Status != 200 {
			t.Errorf("Sidekiq 7 GET %s: status %d, want 200; body:\n%.2000s", path, r.Status, r.Body)
			continue
		}
		for _, want := range wants {
			if !strings.Contains(r.Body, want) {
				t.Errorf("Sidekiq 7 GET %s: body does not contain %q", path, want)
			}
		}
	}
	stopWorker(t, w, 30*time.Second)
}
