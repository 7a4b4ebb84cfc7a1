// Package queue is the public face of ferry's Sidekiq protocol: push
// Sidekiq jobs to Redis exactly as a Ruby client does, and read Sidekiq
// payloads. ferry's worker side (reliable fetch, retries, heartbeats,
// orphan recovery, steal) is internal; run it with package process or
// `ferry worker`.
//
// A [Client] enqueues jobs the way Sidekiq's client does: SADD queues and
// LPUSH queue:<name> in one pipeline, or ZADD schedule for a future
// [PushOptions].At, with a fresh 24-hex jid and float-second timestamps:
//
//	c := queue.NewClient(rdb)
//	jid, err := c.Push(ctx, "HardWorker", json.RawMessage(`[1,"two"]`), queue.PushOptions{Queue: "go"})
//
// [WaitForReplicas] makes pushes survive a Redis Sentinel failover.
//
// A [Job] is a Sidekiq payload kept as its exact bytes plus its keys in
// order; [ParseJob] checks one (an object with a "class" string and an
// "args" array) and keeps unknown keys, key order and integers of any size.
package queue

import (
	"encoding/json"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

// Client pushes Sidekiq jobs to Redis; safe for concurrent use.
type Client = sidekiq.Client

// ClientOption configures a Client.
type ClientOption = sidekiq.ClientOption

// PushOptions are per-push settings (queue, retry, schedule, extra keys).
type PushOptions = sidekiq.PushOptions

// Job is a Sidekiq payload: its exact bytes and its keys in order.
type Job = sidekiq.Job

// WeightedQueue is one queue of a worker's --queues, with its weight.
type WeightedQueue = sidekiq.WeightedQueue

// NewClient wraps a go-redis client.
func NewClient(rdb redis.UniversalClient, opts ...ClientOption) *Client {
	return sidekiq.NewClient(rdb, opts...)
}

// WaitForReplicas makes every push wait until n replicas confirm it (Redis
// WAIT, up to timeout per try) and push again, without doubling, what they
// did not confirm.
func WaitForReplicas(n int, timeout time.Duration) ClientOption {
	return sidekiq.WaitForReplicas(n, timeout)
}

// ParseJob checks and parses one Sidekiq payload.
func ParseJob(data []byte) (*Job, error) { return sidekiq.ParseJob(data) }

// ParseQueues parses Sidekiq's queue list: "a,b" (strict order) or
// "a:3,b:1" (weighted).
func ParseQueues(spec string) ([]WeightedQueue, error) { return sidekiq.ParseQueues(spec) }

// RetryTimes is PushOptions.Retry for retry:n.
func RetryTimes(n int) json.RawMessage { return sidekiq.RetryTimes(n) }

// NoRetry is PushOptions.Retry for retry:false.
var NoRetry = sidekiq.NoRetry

// QueueKey is the Redis list of a queue: "queue:<name>".
func QueueKey(name string) string { return sidekiq.QueueKey(name) }

// Errors of pushing and parsing.
var (
	ErrInvalidJob    = sidekiq.ErrInvalidJob
	ErrInvalidArgs   = sidekiq.ErrInvalidArgs
	ErrNotReplicated = sidekiq.ErrNotReplicated
)
