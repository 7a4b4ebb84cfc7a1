package sidekiq

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// The info JSON has 7.x's "weights" (launcher.rb to_weights: one object per
// capsule, queue -> weight, in the order given) and 8.x's "capsules"
// (capsule name -> Capsule#to_h {concurrency, mode, weights}), beside 6.4's
// fields.
func TestProcessInfoWeightsAndCapsules(t *testing.T) {
	t.Parallel()
	tb := setup(t, BrokerOptions{Identity: "vm:1:abcabcabcabc"})
	info := ProcessInfo{Hostname: "vm", Pid: 1, Concurrency: 4, Version: "ferry 1"}
	info.SetQueues([]WeightedQueue{{Name: "zeta", Weight: 3}, {Name: "alpha", Weight: 1}})
	if _, err := tb.broker.Heartbeat(tb.ctx, info, BeatState{}); err != nil {
		t.Fatal(err)
	}
	raw := tb.rdb.HGet(tb.ctx, "vm:1:abcabcabcabc", "info").Val()
	for _, want := range []string{
		`"queues":["zeta","alpha"]`,
		`"weights":[{"zeta":3,"alpha":1}]`,
		`"capsules":{"default":{"concurrency":4,"mode":"weighted","weights":{"zeta":3,"alpha":1}}}`,
		`"version":"ferry 1"`, `"embedded":false`, `"concurrency":4`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("info %s lacks %s", raw, want)
		}
	}
	var back ProcessInfo
	if err := json.Unmarshal([]byte(raw), &back); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Weights[0], info.Weights[0]) || back.Capsules["default"].Mode != "weighted" {
		t.Errorf("decoded info = %+v, want the weights in order", back)
	}
}

func TestQueueWeightsMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		qs   QueueWeights
		mode string
		js   string
	}{
		{QueueWeights{{Name: "a"}, {Name: "b"}}, "strict", `{"a":0,"b":0}`},
		{QueueWeights{{Name: "a", Weight: 1}, {Name: "b", Weight: 1}}, "random", `{"a":1,"b":1}`},
		{QueueWeights{{Name: "a", Weight: 3}, {Name: "b"}}, "weighted", `{"a":3,"b":0}`},
		{QueueWeights{{Name: `q"<&>`, Weight: 2}}, "weighted", `{"q\"<&>":2}`},
	} {
		js, err := tc.qs.MarshalJSON()
		if err != nil || string(js) != tc.js || tc.qs.Mode() != tc.mode {
			t.Errorf("%v: JSON %s (%v), mode %s; want %s, %s", tc.qs, js, err, tc.qs.Mode(), tc.js, tc.mode)
		}
		var back QueueWeights
		if err := json.Unmarshal(js, &back); err != nil || !slices.Equal(back, tc.qs) {
			t.Errorf("decode %s = %v, %v", js, back, err)
		}
	}
	var w QueueWeights
	if err := json.Unmarshal([]byte(`["a"]`), &w); err == nil {
		t.Error("an array decoded as weights")
	}
}
