package sidekiq

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Client pushes Sidekiq jobs to Redis. It is safe for concurrent use.
type Client struct {
	rdb redis.UniversalClient
	now func() time.Time
	// waitReplicas > 0: a push counts only once that many replicas have it
	// (WaitForReplicas).
	waitReplicas int
	waitTimeout  time.Duration
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WaitForReplicas makes every push wait (Redis WAIT, up to timeout) until n
// replicas have it, and push again what they did not confirm, until they
// do or ctx ends. Redis replicates asynchronously: without it, a push the
// master acknowledged just before a Sentinel failover can vanish with the
// old master. The price is a round trip to the replicas per push, and
// pushes that block while fewer than n replicas are connected (as Redis'
// own min-replicas-to-write refuses writes).
func WaitForReplicas(n int, timeout time.Duration) ClientOption {
	return func(c *Client) { c.waitReplicas, c.waitTimeout = n, timeout }
}

// NewClient wraps a go-redis client.
func NewClient(rdb redis.UniversalClient, opts ...ClientOption) *Client {
	c := &Client{rdb: rdb, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	if c.waitReplicas > 0 && c.waitTimeout <= 0 {
		c.waitTimeout = time.Second
	}
	return c
}

// Redis returns the underlying go-redis client.
func (c *Client) Redis() redis.UniversalClient { return c.rdb }

// PushOptions are per-push settings. Zero values mean Sidekiq's defaults.
type PushOptions struct {
	Queue string // default "default"
	// Retry is encoded as the job's "retry" key: nil leaves it unset
	// (Sidekiq's default, true); use RetryTimes or NoRetry.
	Retry json.RawMessage
	// At schedules the job; a time at or before now pushes it immediately.
	At time.Time
	// Extra keys merged into the payload (e.g. "backtrace", "display_class").
	Extra map[string]json.RawMessage
}

// NoRetry is PushOptions.Retry for retry:false.
var NoRetry = json.RawMessage("false")

// RetryTimes is PushOptions.Retry for retry:n.
func RetryTimes(n int) json.RawMessage { return json.RawMessage(fmt.Sprint(n)) }

// ErrInvalidArgs reports args that are not a JSON array.
var ErrInvalidArgs = errors.New("job args must be a JSON array")

// ValidatePush checks what [Client.PushBulk] checks of a job's class and
// options before anything is written: a non-empty class and queue name
// of printable UTF-8 (Ruby reads both as strings; an invalid byte made
// the queue key and the payload's queue differ), and valid retry and
// extra keys. Errors wrap [ErrInvalidJob].
func ValidatePush(class string, opts PushOptions) error {
	if err := checkName("class", class); err != nil {
		return fmt.Errorf("push: %w: %w", ErrInvalidJob, err)
	}
	if opts.Queue != "" {
		if err := ValidateQueueName(opts.Queue); err != nil {
			return fmt.Errorf("push %s: %w: %w", class, ErrInvalidJob, err)
		}
	}
	if opts.Retry != nil && !validRetry(opts.Retry) {
		return fmt.Errorf("push %s: %w: retry must be true, false or an integer, got %.40q", class, ErrInvalidJob, string(opts.Retry))
	}
	for k, v := range opts.Extra {
		if reservedKeys[k] {
			return fmt.Errorf("push %s: %w: PushOptions.Extra must not set %q", class, ErrInvalidJob, k)
		}
		if !utf8.ValidString(k) || !json.Valid(v) || !utf8.Valid(v) {
			return fmt.Errorf("push %s: %w: PushOptions.Extra[%q] is not valid UTF-8 JSON", class, ErrInvalidJob, k)
		}
	}
	return nil
}

// ValidateArgs checks a job's args: a JSON array of valid UTF-8 (Go's
// JSON decoder would quietly turn an invalid byte into U+FFFD and Ruby's
// raises). Errors wrap [ErrInvalidArgs].
func ValidateArgs(args json.RawMessage) error {
	if !isJSONArray(args) {
		return fmt.Errorf("%w (got %.40q)", ErrInvalidArgs, string(args))
	}
	if !utf8.Valid(args) {
		return fmt.Errorf("%w: not valid UTF-8 (got %.40q)", ErrInvalidArgs, string(args))
	}
	return nil
}

// ValidateQueueName requires a queue name of printable UTF-8 without
// white space: the name is both part of a key (queue:<name>) and a value
// in payloads and the queues set, which must match byte for byte.
func ValidateQueueName(name string) error {
	if err := checkName("queue", name); err != nil {
		return err
	}
	if strings.ContainsFunc(name, unicode.IsSpace) {
		return fmt.Errorf("queue name %q contains white space", name)
	}
	return nil
}

// checkName requires a non-empty name of valid UTF-8 without control
// characters.
func checkName(what, s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("%s is empty", what)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	case strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("%s %q contains control characters", what, s)
	}
	return nil
}

// Push enqueues one job and returns its jid. With WaitForReplicas, an
// error wrapping ErrNotReplicated comes with the jid too.
func (c *Client) Push(ctx context.Context, class string, args json.RawMessage, opts PushOptions) (string, error) {
	jids, err := c.PushBulk(ctx, class, []json.RawMessage{args}, opts)
	if len(jids) == 0 {
		return "", err
	}
	return jids[0], err // with ErrNotReplicated, the jid of a job that may be in Redis
}

// PushBulk enqueues many jobs of one class in a single round trip, each with
// its own jid, all with the same enqueued_at (as Sidekiq's push_bulk does).
func (c *Client) PushBulk(ctx context.Context, class string, argsList []json.RawMessage, opts PushOptions) ([]string, error) {
	if err := ValidatePush(class, opts); err != nil {
		return nil, err
	}
	q := opts.Queue
	if q == "" {
		q = "default"
	}
	extraKeys := make([]string, 0, len(opts.Extra))
	for k := range opts.Extra {
		extraKeys = append(extraKeys, k)
	}
	sort.Strings(extraKeys) // deterministic payload bytes
	now := c.now()
	scheduled := !opts.At.IsZero() && opts.At.After(now)
	jids := make([]string, len(argsList))
	jobs := make([]push, 0, len(argsList))
	for i, args := range argsList {
		if len(args) == 0 {
			args = json.RawMessage("[]")
		}
		if err := ValidateArgs(args); err != nil {
			return nil, fmt.Errorf("push %s: %w", class, err)
		}
		j := NewJob(class, args, q)
		j.SetString("jid", NewJID())
		if opts.Retry != nil {
			j.Set("retry", opts.Retry)
		} else {
			j.Set("retry", json.RawMessage("true"))
		}
		for _, k := range extraKeys {
			j.Set(k, opts.Extra[k])
		}
		j.SetTime("created_at", epoch(now))
		jids[i] = j.JID()
		if scheduled {
			jobs = append(jobs, push{score: epoch(opts.At), payload: string(j.Encode())})
		} else {
			j.SetTime("enqueued_at", epoch(now))
			jobs = append(jobs, push{payload: string(j.Encode())})
		}
	}
	if len(jids) == 0 {
		return jids, nil
	}
	if err := c.write(ctx, q, jobs); err != nil {
		if errors.Is(err, ErrNotReplicated) {
			// The jobs may be in Redis: the caller needs their jids to
			// check before pushing again.
			return jids, fmt.Errorf("push %s: %w", class, err)
		}
		return nil, fmt.Errorf("push %s: %w", class, err)
	}
	return jids, nil
}

// push is one job to write: its schedule score (0: now) and bytes.
type push struct {
	score   float64
	payload string
}

// write pushes jobs to queue q (or to the schedule) in one round trip. With
// waitReplicas it then makes sure replicas have them: while they do not
// confirm, the master may be one a failover is leaving behind, so it pushes
// again (to whichever master the client reaches by then), each job only
// where its marker is missing (durablePushScript).
func (c *Client) write(ctx context.Context, q string, jobs []push) error {
	if c.waitReplicas == 0 {
		return c.writePlain(ctx, q, jobs)
	}
	for again := false; ; again = true {
		ok, err := c.writeDurable(ctx, q, jobs)
		if ok || (err != nil && (!again || !failingOver(err))) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d replica(s) did not confirm it: %w", ErrNotReplicated, c.waitReplicas, ctx.Err())
		case <-time.After(c.waitTimeout / 4):
		}
	}
}

func (c *Client) writePlain(ctx context.Context, q string, jobs []push) error {
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if jobs[0].score > 0 {
			zs := make([]redis.Z, len(jobs))
			for i, j := range jobs {
				zs[i] = redis.Z{Score: j.score, Member: j.payload}
			}
			for start := 0; start < len(zs); start += 1000 {
				p.ZAdd(ctx, keySchedule, zs[start:min(start+1000, len(zs))]...)
			}
			return nil
		}
		members := make([]any, len(jobs))
		for i, j := range jobs {
			members[i] = j.payload
		}
		p.SAdd(ctx, keyQueues, q)
		for start := 0; start < len(members); start += 1000 {
			p.LPush(ctx, QueueKey(q), members[start:min(start+1000, len(members))]...)
		}
		return nil
	})
	return err
}

// writeDurable is one attempt of a push replicas must confirm; ok when
// they did.
func (c *Client) writeDurable(ctx context.Context, q string, jobs []push) (ok bool, err error) {
	key, name := QueueKey(q), q
	if jobs[0].score > 0 {
		key, name = keySchedule, ""
	}
	var wait *redis.Cmd
	var evals []*redis.Cmd
	// Each command's own error is read below: a failed WAIT is not a
	// failed push.
	_, _ = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for start := 0; start < len(jobs); start += 1000 {
			args := []any{name, keyPushedPrefix, int(pushedTTL.Seconds())}
			for _, j := range jobs[start:min(start+1000, len(jobs))] {
				// The marker names these exact bytes: a later push of the
				// same jid (a retry) differs and is not mistaken for this one.
				sum := sha1.Sum([]byte(j.payload))
				args = append(args, hex.EncodeToString(sum[:]), j.score, j.payload)
			}
			// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT.
			evals = append(evals, durablePushScript.Eval(ctx, p, []string{key, keyQueues}, args...))
		}
		wait = p.Do(ctx, "WAIT", c.waitReplicas, c.waitTimeout.Milliseconds())
		return nil
	})
	for _, e := range evals {
		if e.Err() != nil {
			return false, e.Err()
		}
	}
	// The writes landed; a WAIT that failed (e.g. a read timeout) only
	// means they are not confirmed yet.
	n, werr := wait.Int()
	return werr == nil && n >= c.waitReplicas, nil
}

// failingOver reports the errors of a Redis in the middle of a failover
// (gone, a replica now, loading, no master), which a push made again rides
// out; any other error ends it.
func failingOver(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true // connection refused, reset, timeout
	}
	for _, p := range []string{"READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// ErrNotReplicated: replicas did not confirm a push before its context
// ended (Client with WaitForReplicas); the job may or may not be in Redis.
var ErrNotReplicated = errors.New("push not confirmed by Redis replicas")

// PushJob enqueues an existing payload to its queue now, resetting
// enqueued_at and removing "at" (the path the poller and manual retries use).
func (c *Client) PushJob(ctx context.Context, j *Job) error {
	j = reenqueued(j, c.now())
	return c.write(ctx, j.Queue(), []push{{payload: string(j.Encode())}})
}

// reenqueued is a copy of j as it is pushed back to its queue at now (by
// PushJob and the scheduled/retry poller): "at" removed, enqueued_at reset.
func reenqueued(j *Job, now time.Time) *Job {
	n := j.Clone()
	n.Delete("at")
	n.SetTime("enqueued_at", epoch(now))
	return n
}

// reservedKeys are payload keys Push sets itself.
var reservedKeys = map[string]bool{
	"class": true, "args": true, "jid": true, "queue": true, "retry": true,
	"created_at": true, "enqueued_at": true, "at": true,
}

func validRetry(v json.RawMessage) bool {
	s := strings.TrimSpace(string(v))
	if s == "true" || s == "false" {
		return true
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

func isJSONArray(b json.RawMessage) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '[':
			return json.Valid(b)
		default:
			return false
		}
	}
	return false
}
