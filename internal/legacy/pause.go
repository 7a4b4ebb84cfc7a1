package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// PauseInfo is the state of the legacy-migration switch. While it is set,
// every BackgroundMigrationWorker job is rescheduled (never dropped).
type PauseInfo struct {
	By     string    `json:"by"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Pause turns the switch on. It lives in Redis, beside the jobs it
// governs, so every worker sees it on its next job without a database.
func Pause(ctx context.Context, rdb redis.UniversalClient, info PauseInfo) error {
	b, _ := json.Marshal(info)
	if err := rdb.Set(ctx, sidekiq.BMPausedKey, b, 0).Err(); err != nil {
		return fmt.Errorf("bm: pause: %w", err)
	}
	return nil
}

// Resume turns the switch off and reports whether it was on.
func Resume(ctx context.Context, rdb redis.UniversalClient) (bool, error) {
	n, err := rdb.Del(ctx, sidekiq.BMPausedKey).Result()
	if err != nil {
		return false, fmt.Errorf("bm: resume: %w", err)
	}
	return n > 0, nil
}

// PauseStatus returns the switch, or nil when migrations run.
func PauseStatus(ctx context.Context, rdb redis.UniversalClient) (*PauseInfo, error) {
	b, err := rdb.Get(ctx, sidekiq.BMPausedKey).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p PauseInfo
	_ = json.Unmarshal(b, &p) // any value means paused, even one we cannot read
	return &p, nil
}
