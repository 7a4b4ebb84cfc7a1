package sidekiq

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// BMSlot is one running slot of a legacy migration class (internal/legacy): held
// while a job of the class runs, refreshed meanwhile, given back when it
// ends. Slots are counted per class and cluster-wide.
type BMSlot struct {
	Class, Token string
}

// BMSlotResult is the outcome of a slot operation.
type BMSlotResult int

// Slot outcomes.
const (
	BMSlotTaken       BMSlotResult = 1  // acquired, or refreshed in time
	BMSlotRetaken     BMSlotResult = 2  // a refresh found it lapsed and took it again
	BMSlotClassFull   BMSlotResult = 0  // the class runs its limit of jobs
	BMSlotClusterFull BMSlotResult = -1 // the cluster runs its limit of legacy jobs
)

// BMSlotLimits are the limits an acquire (or a refresh that retakes a
// lapsed slot) checks, and the slot's TTL.
type BMSlotLimits struct {
	PerClass, Cluster int
	TTL               time.Duration
}

func (s BMSlot) run(ctx context.Context, rdb redis.UniversalClient, op string, l BMSlotLimits) (BMSlotResult, error) {
	n, err := bmSlotScript.Run(ctx, rdb, []string{bmRunningKey(s.Class), bmRunningAllKey},
		op, s.Token, s.Class+"\n"+s.Token, l.TTL.Milliseconds(), l.PerClass, l.Cluster).Int()
	if err != nil {
		return 0, fmt.Errorf("legacy migration slot %s %s: %w", op, s.Class, err)
	}
	return BMSlotResult(n), nil
}

// Acquire takes the slot if the class and the cluster are under their limits.
func (s BMSlot) Acquire(ctx context.Context, rdb redis.UniversalClient, l BMSlotLimits) (BMSlotResult, error) {
	return s.run(ctx, rdb, "acquire", l)
}

// Refresh extends the slot's TTL.
func (s BMSlot) Refresh(ctx context.Context, rdb redis.UniversalClient, l BMSlotLimits) (BMSlotResult, error) {
	return s.run(ctx, rdb, "refresh", l)
}

// Release gives the slot back.
func (s BMSlot) Release(ctx context.Context, rdb redis.UniversalClient) error {
	_, err := s.run(ctx, rdb, "release", BMSlotLimits{TTL: time.Millisecond})
	return err
}

// BMRunning counts the live slots per class.
func BMRunning(ctx context.Context, rdb redis.UniversalClient) (map[string]int, error) {
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("legacy migration slots: %w", err)
	}
	ms := fmt.Sprint(now.UnixMilli())
	members, err := rdb.ZRangeByScore(ctx, bmRunningAllKey, &redis.ZRangeBy{Min: "(" + ms, Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("legacy migration slots: %w", err)
	}
	out := map[string]int{}
	for _, m := range members {
		class, _, _ := strings.Cut(m, "\n")
		out[class]++
	}
	return out, nil
}
