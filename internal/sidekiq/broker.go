package sidekiq

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Broker is one worker process's view of a Sidekiq Redis: reliable fetch,
// acknowledgement, retries and the dead set, the scheduled/retry poller,
// heartbeat and orphan recovery. It is safe for concurrent use.
type Broker struct {
	rdb      redis.UniversalClient
	client   *Client
	identity string
	opts     BrokerOptions
	// maxRetries is opts.MaxRetries resolved: the limit for retry:true.
	maxRetries int
	log        *zap.Logger

	// aliveAt is when (monotonic, since clockBase) the last round trip
	// that refreshed this process's alive key started; 0 = never.
	clockBase time.Time
	aliveAt   atomic.Int64
}

// BrokerOptions configure a Broker. Zero values take Sidekiq's defaults.
type BrokerOptions struct {
	// Identity is "<hostname>:<pid>:<12 hex>" as Sidekiq forms it; generated when empty.
	Identity string
	// MaxRetries is the retry limit of jobs with retry:true (a job's own
	// retry:N always wins). nil takes Sidekiq's default, [DefaultMaxRetries];
	// new(0) sends such a job to the dead set on its first failure, as
	// Sidekiq's max_retries 0 does.
	MaxRetries *int
	// DeadMaxJobs and DeadTimeout bound the dead set (10,000 and 180 days).
	DeadMaxJobs int
	DeadTimeout time.Duration
	// MaxRecoveries is how many times a job may be rescued from a dead
	// process within RecoveryWindow before it is treated as a poison pill
	// and sent to the dead set (default 3).
	MaxRecoveries int
	// RecoveryWindow is how long a rescue counts towards MaxRecoveries
	// (default 72 h, as Sidekiq Pro's super_fetch), so a job caught in
	// unrelated crashes weeks apart is not taken for a poison pill.
	RecoveryWindow time.Duration
	// AliveTTL is how long a process counts as alive after its last
	// refresh (heartbeat or fetch) of its alive key (default 20 s).
	AliveTTL time.Duration
	// RecoveryGrace is how long another process's alive key must have been
	// missing, continuously, before its in-flight jobs are recovered
	// (default AliveTTL/2). A live process re-creates a lost key within a
	// heartbeat, so an empty Redis restart or an evicted key never makes
	// a live process look dead; a process that really stopped refreshing
	// stopped its jobs AliveTTL/2 before its key expired (see worker), so
	// its jobs get AliveTTL/2 + RecoveryGrace to notice cancellation.
	RecoveryGrace time.Duration
	Logger        *zap.Logger
	// Now and Rand are injectable for tests.
	Now  func() time.Time
	Rand func(n int) int
}

// DefaultMaxRetries is Sidekiq's retry limit for retry:true.
const DefaultMaxRetries = 25

// ErrNotFound is returned when a job or entry does not exist.
var ErrNotFound = errors.New("not found")

// NewBroker validates opts and returns a Broker.
func NewBroker(rdb redis.UniversalClient, opts BrokerOptions) (*Broker, error) {
	if rdb == nil {
		return nil, errors.New("queue: NewBroker: redis client is nil")
	}
	maxRetries := DefaultMaxRetries
	if opts.MaxRetries != nil {
		maxRetries = *opts.MaxRetries
	}
	if maxRetries < 0 {
		return nil, fmt.Errorf("queue: MaxRetries must be >= 0, got %d", maxRetries)
	}
	if opts.DeadMaxJobs == 0 {
		opts.DeadMaxJobs = 10_000
	}
	if opts.DeadTimeout == 0 {
		opts.DeadTimeout = 180 * 24 * time.Hour
	}
	if opts.MaxRecoveries == 0 {
		opts.MaxRecoveries = 3
	}
	if opts.RecoveryWindow == 0 {
		opts.RecoveryWindow = 72 * time.Hour
	}
	if opts.RecoveryWindow < 0 {
		return nil, fmt.Errorf("queue: RecoveryWindow must not be negative, got %s", opts.RecoveryWindow)
	}
	if opts.AliveTTL == 0 {
		opts.AliveTTL = 20 * time.Second
	}
	if opts.RecoveryGrace == 0 {
		opts.RecoveryGrace = opts.AliveTTL / 2
	}
	if opts.AliveTTL < 0 || opts.RecoveryGrace < 0 {
		return nil, fmt.Errorf("queue: AliveTTL (%s) and RecoveryGrace (%s) must not be negative", opts.AliveTTL, opts.RecoveryGrace)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.IntN
	}
	if opts.Identity == "" {
		opts.Identity = NewIdentity()
	}
	c := NewClient(rdb)
	c.now = opts.Now
	return &Broker{rdb: rdb, client: c, identity: opts.Identity, opts: opts, maxRetries: maxRetries, log: opts.Logger,
		clockBase: time.Now()}, nil
}

// LastAliveRefresh is when the last round trip that refreshed this
// process's alive key (a heartbeat or a fetch) started, on the monotonic
// clock; zero if none has succeeded. The key lives AliveTTL from a moment
// after that, so a process may count on its liveness until
// LastAliveRefresh + AliveTTL, and must stop its jobs well before.
func (b *Broker) LastAliveRefresh() time.Time {
	d := b.aliveAt.Load()
	if d == 0 {
		return time.Time{}
	}
	return b.clockBase.Add(time.Duration(d))
}

// noteAliveRefresh records a successful refresh that started at start.
// Refreshes may complete out of order; the latest start wins.
func (b *Broker) noteAliveRefresh(start time.Time) {
	d := max(int64(start.Sub(b.clockBase)), 1)
	for {
		cur := b.aliveAt.Load()
		if d <= cur || b.aliveAt.CompareAndSwap(cur, d) {
			return
		}
	}
}

// NewIdentity returns a Sidekiq-style process identity.
func NewIdentity() string {
	host := hostname()
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), NewJID()[:12])
}

// Identity is this process's identity in the "processes" set.
func (b *Broker) Identity() string { return b.identity }

// Client returns a push client sharing the broker's Redis connection.
func (b *Broker) Client() *Client { return b.client }

// Redis returns the underlying go-redis client.
func (b *Broker) Redis() redis.UniversalClient { return b.rdb }

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

func zapInt(k string, v int) zap.Field { return zap.Int(k, v) }
