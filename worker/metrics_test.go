package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

type boomArgs struct{}

func (boomArgs) Kind() string { return "Boom" }

// sumMetrics adds up field over every minute hash of one family: 7.x
// ("j|YYYYMMDD|H:M") or 8.x ("j|YYMMDD|H:MM"), so a minute boundary
// during the test does not matter.
func sumMetrics(t *testing.T, b *rtBundle, sidekiq8 bool, field string) int {
	t.Helper()
	keys, err := b.rdb.Keys(b.ctx, "j|*").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range keys {
		date, minute, _ := strings.Cut(strings.TrimPrefix(k, "j|"), "|")
		_, mm, _ := strings.Cut(minute, ":")
		if (len(date) == 6) != sidekiq8 || (sidekiq8 && len(mm) != 2) {
			continue
		}
		v, _ := strconv.Atoi(b.rdb.HGet(b.ctx, k, field).Val())
		n += v
	}
	return n
}

// A running worker writes its jobs' metrics where Sidekiq 7.x and 8.x
// read them, and describes its weighted queues in its process info.
func TestRuntimeWritesMetricsAndWeights(t *testing.T) {
	t.Parallel()
	reg := registry(t, func(r *Registry) {
		AddWorker(r, WorkFunc[echoArgs](func(context.Context, *Job[echoArgs]) error { return nil }))
		AddWorker(r, WorkFunc[boomArgs](func(context.Context, *Job[boomArgs]) error { return errors.New("boom") }))
	})
	b := startRuntime(t, nil, Config{Registry: reg, Concurrency: 3,
		Queues: []sidekiq.WeightedQueue{{Name: "a", Weight: 3}, {Name: "b", Weight: 1}}})
	for i := range 5 {
		b.push(t, "Echo", "["+strconv.Itoa(i)+"]", sidekiq.PushOptions{Queue: "a"})
	}
	b.push(t, "Boom", "[]", sidekiq.PushOptions{Queue: "b"})
	b.push(t, "Boom", "[]", sidekiq.PushOptions{Queue: "b"})
	b.push(t, "Nope::Missing", "[]", sidekiq.PushOptions{Queue: "b"}) // never loaded: not tracked, as in Sidekiq
	for _, v8 := range []bool{false, true} {
		testenv.Eventually(t, 10*time.Second, "metrics flushed", func() bool {
			return sumMetrics(t, b, v8, "Echo|p") == 5 && sumMetrics(t, b, v8, "Boom|p") == 2
		})
		if f, ef := sumMetrics(t, b, v8, "Boom|f"), sumMetrics(t, b, v8, "Echo|f"); f != 2 || ef != 0 {
			t.Errorf("sidekiq8=%v: Boom|f = %d, Echo|f = %d; want 2, 0", v8, f, ef)
		}
		if n := sumMetrics(t, b, v8, "Nope::Missing|p"); n != 0 {
			t.Errorf("sidekiq8=%v: an unknown class was tracked %d times", v8, n)
		}
	}

	var info struct {
		Queues   []string                  `json:"queues"`
		Weights  []map[string]int          `json:"weights"`
		Version  string                    `json:"version"`
		Capsules map[string]map[string]any `json:"capsules"`
	}
	if err := json.Unmarshal([]byte(b.rdb.HGet(b.ctx, b.rt.Identity(), "info").Val()), &info); err != nil {
		t.Fatal(err)
	}
	c := info.Capsules["default"]
	if len(info.Weights) != 1 || info.Weights[0]["a"] != 3 || info.Weights[0]["b"] != 1 || !strings.HasPrefix(info.Version, "ferry") ||
		c["concurrency"] != 3.0 || c["mode"] != "weighted" || strings.Join(info.Queues, ",") != "a,b" {
		t.Errorf("process info = %+v, want weights [{a:3 b:1}], a ferry version and a weighted default capsule of 3", info)
	}
}
