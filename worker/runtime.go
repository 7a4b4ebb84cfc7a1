package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/logrepeat"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/sleep"
)

// Middleware wraps job execution: call next to run the job (or the rest
// of the chain). The payload is the full Sidekiq job.
type Middleware func(ctx context.Context, job *sidekiq.Job, next func(ctx context.Context) error) error

// Config configures a [Runtime]. Zero values take Sidekiq's defaults.
type Config struct {
	// Redis is required. Give it ContextTimeoutEnabled (config.NewRedis
	// does): go-redis applies context deadlines to socket reads and writes
	// only then, and a stop bounds its Redis calls by its deadline.
	Redis    redis.UniversalClient
	Registry *Registry // required
	// Queues to fetch from; default "background_migration". Weights > 0
	// switch to Sidekiq's weighted random order.
	Queues      []sidekiq.WeightedQueue
	Concurrency int // default 10
	// Timeout is the shutdown grace: Run returns within it of a stop,
	// running jobs pushed back and cancelled a little before its end, even
	// when Redis does not answer (see [Runtime.Run] for the one exception).
	// nil takes [DefaultTimeout]; it must be positive.
	Timeout *time.Duration
	// PollInterval is Sidekiq's average_scheduled_poll_interval (default 5 s).
	PollInterval time.Duration
	// HeartbeatInterval defaults to 5 s, which both Sidekiq 6 and 7 readers accept.
	HeartbeatInterval time.Duration
	// RecoveryInterval is how often orphaned jobs of dead processes are
	// looked for (default 10 s, jittered).
	RecoveryInterval time.Duration
	// MaxRetries is the retry limit of jobs with retry:true (a job's own
	// retry:N wins). nil takes Sidekiq's 25 ([sidekiq.DefaultMaxRetries]);
	// new(0) sends a failing retry:true job straight to the dead set.
	MaxRetries *int
	Tag        string
	Labels     []string
	Version    string
	Hostname   string
	Identity   string // default "<hostname>:<pid>:<12 hex>"
	Middleware []Middleware
	Logger     *zap.Logger
	// AliveTTL is how long after its last refresh (heartbeat or fetch) this
	// process counts as alive in Redis. Default max(20 s, 4 ×
	// HeartbeatInterval); it must be at least 4 × HeartbeatInterval. After
	// AliveTTL/2 without a successful refresh the process stops fetching
	// and cancels its running jobs ([ErrLivenessLost]), well before others
	// may take them over (see liveness.go for the timings and why).
	AliveTTL time.Duration
	// RecoveryGrace is how long another process's alive key must have been
	// missing without a break before this process recovers its jobs.
	// Default AliveTTL/2. Give every process of a cluster the same AliveTTL
	// and RecoveryGrace: one's cancellation deadline and the others'
	// recovery delay are computed from them.
	RecoveryGrace time.Duration
}

// DefaultTimeout is Sidekiq's shutdown grace (its -t default).
const DefaultTimeout = 25 * time.Second

func (c *Config) withDefaults() error {
	if c.Redis == nil {
		return errors.New("worker: Config.Redis is required")
	}
	if c.Registry == nil {
		return errors.New("worker: Config.Registry is required")
	}
	if len(c.Queues) == 0 {
		c.Queues = []sidekiq.WeightedQueue{{Name: "background_migration"}}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 10
	}
	if c.Concurrency < 1 || c.Concurrency > 1000 {
		return fmt.Errorf("worker: Config.Concurrency must be between 1 and 1000, got %d", c.Concurrency)
	}
	timeout := DefaultTimeout
	if c.Timeout != nil {
		timeout = *c.Timeout
	}
	if timeout <= 0 {
		return fmt.Errorf("worker: Config.Timeout must be positive (nil takes the default %s), got %s", DefaultTimeout, timeout)
	}
	c.Timeout = new(timeout) // a copy: the caller's variable may change later
	if c.MaxRetries != nil && *c.MaxRetries < 0 {
		return fmt.Errorf("worker: Config.MaxRetries must be >= 0 (nil takes the default %d), got %d", sidekiq.DefaultMaxRetries, *c.MaxRetries)
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.AliveTTL == 0 {
		c.AliveTTL = max(20*time.Second, 4*c.HeartbeatInterval)
	}
	// The process gives up at AliveTTL/2 without a refresh; that must span
	// two heartbeats, or one slow beat would cancel every running job.
	if c.AliveTTL < 4*c.HeartbeatInterval {
		return fmt.Errorf("worker: Config.AliveTTL (%s) must be at least 4 times Config.HeartbeatInterval (%s)", c.AliveTTL, c.HeartbeatInterval)
	}
	if c.RecoveryGrace < 0 {
		return fmt.Errorf("worker: Config.RecoveryGrace must not be negative, got %s", c.RecoveryGrace)
	}
	if c.RecoveryInterval <= 0 {
		c.RecoveryInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.Identity == "" {
		c.Identity = fmt.Sprintf("%s:%d:%s", c.Hostname, os.Getpid(), sidekiq.NewJID()[:12])
	}
	if c.Version == "" {
		c.Version = "ferry"
	}
	return nil
}

// Runtime is one worker process: it fetches jobs reliably, runs them on a
// bounded number of slots, records retries, heartbeats for the Sidekiq Web
// UI, polls the schedule and retry sets and recovers jobs of dead processes.
type Runtime struct {
	cfg     Config
	broker  *sidekiq.Broker
	fetcher *sidekiq.Fetcher
	log     *zap.Logger
	info    sidekiq.ProcessInfo
	failing logrepeat.Log[string] // background loops failing now (failing.go)

	quietOnce sync.Once
	quietCh   chan struct{} // closed on quiet: stop fetching
	stopOnce  sync.Once
	stopCh    chan struct{} // closed on stop request (TERM via Redis, Stop())

	slots    chan int       // free slot ids
	slotWork []chan slotJob // per slot: the job its goroutine runs next
	mu       sync.Mutex
	inflight []running      // by slot; d is nil while the slot is free
	wg       sync.WaitGroup // running jobs
	// ready holds jobs fetched ahead of a free slot (prefetch, see
	// prefetchTarget): already in our private list, not started. A slot
	// that finishes a job takes the next one from here, under mu, so a job
	// is always in ready or inflight until it is settled, which
	// requeueUnknown relies on. Only short jobs from deep queues are
	// fetched ahead, so a job waits here a few milliseconds at most.
	ready     []slotJob
	readyLow  chan struct{} // a slot took ready down to readyMark
	readyMark atomic.Int64
	finished  atomic.Int64 // jobs run to the end, for the prefetch target
	ranNanos  atomic.Int64 // their total run time
	ranAhead  atomic.Int64 // jobs started from ready
	// prefetchHook, set by tests, replaces the prefetch target of a deep
	// queue.
	prefetchHook func() int

	live *liveness // set by Run
	// stopBy is when Redis calls made while stopping must end (unix
	// nanos, see callBy); 0 until a stop.
	stopBy atomic.Int64
	// stranded is set when a job ended because liveness was lost: it is
	// still in our private list, and the fetch loop pushes it back.
	stranded atomic.Bool

	// Finished jobs waiting to be acknowledged in one batch. A job is
	// always in inflight or in one of these two until its ack is written,
	// which reconcile relies on.
	ackMu       sync.Mutex
	ackPending  []*sidekiq.Delivery
	ackFlushing []*sidekiq.Delivery
	ackWake     chan struct{}
	ackRides    atomic.Int64 // fetches that carried acks

	processed atomic.Int64
	failed    atomic.Int64
	metrics   *sidekiq.ExecMetrics // per class, for Sidekiq's Metrics page
	started   atomic.Bool

	// For Health, read from other goroutines.
	liveRef atomic.Pointer[liveness]
	running atomic.Bool
	loopAt  atomic.Int64 // unix nanos of the heartbeat loop's last round
}

type running struct {
	d     *sidekiq.Delivery
	runAt time.Time
}

// Prefetch: when jobs are short and the queue is deep, the fetch loop
// asks for more jobs than there are free slots, so that one fetch (one
// round trip and one script run in Redis) serves many jobs. Measured with
// no-op jobs (BENCHMARKS.md §1): a round trip costs about as much CPU, Go
// and Redis together, as four jobs.
const (
	// prefetchHorizon: fetch ahead what the slots run in that time, so a
	// prefetched job waits at most about that long. It must cover a round
	// trip to Redis, which on a busy host includes waiting for a CPU: 2 ms
	// (at most 4 × concurrency) left slots idle there, 5 ms took no-op jobs
	// from about 12 to 9.5 µs of CPU each (Go and Redis).
	prefetchHorizon = 5 * time.Millisecond
	// prefetchWindow is how long run times are averaged over.
	prefetchWindow = 20 * time.Millisecond
	// prefetchMax caps what is fetched ahead, in multiples of Concurrency.
	prefetchMax = 16
)

// slotJob is a job handed to a slot goroutine, with the context it runs
// under (cancelled at a hard stop or when liveness is lost).
type slotJob struct {
	ctx context.Context
	d   *sidekiq.Delivery
}

// New validates cfg and builds a Runtime.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	b, err := sidekiq.NewBroker(cfg.Redis, sidekiq.BrokerOptions{
		Identity: cfg.Identity, MaxRetries: cfg.MaxRetries, Logger: cfg.Logger, AliveTTL: cfg.AliveTTL,
		RecoveryGrace: cfg.RecoveryGrace,
	})
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		cfg: cfg, broker: b, fetcher: b.NewFetcher(cfg.Queues),
		log: cfg.Logger.Named("worker"),
		info: sidekiq.ProcessInfo{
			Hostname: cfg.Hostname, StartedAt: float64(time.Now().UnixNano()) / 1e9, Pid: os.Getpid(),
			Tag: cfg.Tag, Concurrency: cfg.Concurrency, Labels: append([]string{"ferry"}, cfg.Labels...),
			Identity: cfg.Identity, Version: processVersion(cfg.Version),
		},
		quietCh:  make(chan struct{}),
		stopCh:   make(chan struct{}),
		slots:    make(chan int, cfg.Concurrency),
		inflight: make([]running, cfg.Concurrency),
		readyLow: make(chan struct{}, 1),
		ackWake:  make(chan struct{}, 1),
		metrics:  sidekiq.NewExecMetrics(),
	}
	r.info.SetQueues(cfg.Queues) // queues, 7.x weights, 8.x capsules
	r.slotWork = make([]chan slotJob, cfg.Concurrency)
	r.fetcher.DeferParse = true // parsed on the slot goroutines, not in the fetch loop
	for i := range cfg.Concurrency {
		r.slots <- i
		r.slotWork[i] = make(chan slotJob, 1)
	}
	return r, nil
}

// processVersion is the "version" the Sidekiq 7+ Busy page shows next to a
// process whose version differs from its own: name ferry there.
func processVersion(v string) string {
	if strings.HasPrefix(v, "ferry") {
		return v
	}
	return "ferry " + v
}

// Identity is the process identity shown on the Sidekiq Busy page.
func (r *Runtime) Identity() string { return r.cfg.Identity }

// Broker exposes the Redis protocol layer (push client, identity).
func (r *Runtime) Broker() *sidekiq.Broker { return r.broker }

// Quiet stops fetching new jobs; running jobs finish. There is no un-quiet
// (as in Sidekiq's TSTP).
func (r *Runtime) Quiet() {
	r.quietOnce.Do(func() {
		close(r.quietCh)
		r.log.Info("quiet: no longer fetching jobs")
	})
}

// Stop asks Run to shut down gracefully, as if its context were cancelled.
func (r *Runtime) Stop() { r.stopOnce.Do(func() { close(r.stopCh) }) }

// Stopped is closed once a stop has been requested.
func (r *Runtime) Stopped() <-chan struct{} { return r.stopCh }

// Run works jobs until ctx is cancelled or Stop is called, then stops
// fetching, waits for running jobs, pushes those still running back to
// their queues unchanged and cancels them, all within Config.Timeout of the
// stop (a quarter of it, at most 3 s, is kept for the hard stop); a job that
// ignores cancellation is left behind. Every Redis call after the stop ends
// by that deadline, so Redis not answering does not hold the stop either:
// jobs it could not push back stay in the private list, for another process
// to recover. What follows a hard stop (the last acks, the final
// bookkeeping) gets at least exitAllowance (1 s), so Run may return up to
// that much after Timeout when the hard stop ends late: a job ignores
// cancellation, or Redis does not answer and Timeout is under 8 s. It
// returns nil after a clean stop.
func (r *Runtime) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return ErrStopped
	}
	// workCtx is cancelled only at the hard deadline, so a quiet or stop
	// request never interrupts a job that can still finish in time.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	bgCtx, cancelBg := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBg()

	if err := r.beat(ctx); err != nil {
		return fmt.Errorf("worker: first heartbeat: %w", err)
	}
	if err := r.broker.Register(ctx, r.info.Queues); err != nil {
		return fmt.Errorf("worker: register: %w", err)
	}
	r.log.Info("worker started", zap.String("identity", r.cfg.Identity),
		zap.Strings("queues", r.info.Queues), zap.Int("concurrency", r.cfg.Concurrency))

	// Jobs run under the current liveness epoch, a child of workCtx: lost
	// liveness cancels them without stopping the process.
	r.live = newLiveness(workCtx, r.cfg.AliveTTL/2, r.broker.LastAliveRefresh, r.log)
	r.liveRef.Store(r.live)
	r.loopAt.Store(time.Now().UnixNano())
	r.running.Store(true)
	defer r.running.Store(false)
	var bg sync.WaitGroup
	fetchCtx, cancelFetch := context.WithCancel(bgCtx)
	defer cancelFetch()
	bg.Add(6)
	go func() { defer bg.Done(); r.live.run(bgCtx) }()
	go func() { defer bg.Done(); r.heartbeatLoop(bgCtx) }()
	go func() { defer bg.Done(); r.metricsLoop(bgCtx) }()
	go func() { defer bg.Done(); r.pollLoop(fetchCtx) }()
	go func() { defer bg.Done(); r.recoveryLoop(fetchCtx) }()
	go func() {
		defer bg.Done()
		select { // quiet (TSTP, from the OS or Redis) stops fetching and polling
		case <-r.quietCh:
			cancelFetch()
		case <-fetchCtx.Done():
		}
	}()
	ackDone := make(chan struct{})
	ackExited := make(chan struct{})
	ackCtx, cancelAck := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAck()
	go func() { defer close(ackExited); r.ackLoop(ackCtx, ackDone) }()
	for i := range r.slotWork {
		go r.slotLoop(i)
	}
	fetchDone := make(chan struct{})
	// Slot goroutines end when their channel closes; one still running a
	// job that ignored cancellation ends when that job returns. The fetch
	// loop hands jobs to them, so the channels close only after it ended
	// (later than Run, if Redis stopped answering its fetch).
	defer func() {
		closeSlots := func() {
			for _, ch := range r.slotWork {
				close(ch)
			}
		}
		if closed(fetchDone) {
			closeSlots()
			return
		}
		go func() { <-fetchDone; closeSlots() }()
	}()
	go func() { defer close(fetchDone); r.fetchLoop(fetchCtx) }()

	select {
	case <-ctx.Done():
		r.Stop() // jobs watching Stopping see a stop by ctx too
	case <-r.stopCh:
	}
	// The whole stop, the fetch in progress and the hard stop included,
	// fits in Timeout: orchestrators kill at their own grace period, which
	// operators set from it.
	deadline := time.Now().Add(*r.cfg.Timeout)
	r.stopBy.Store(deadline.UnixNano())
	r.Quiet()
	cancelFetch()
	// A fetch ends within its block time (1 s) with Redis up; one Redis
	// does not answer ends only at its read timeout. The running jobs need
	// no fetch loop: wait for it no longer than for them.
	jobsBy := deadline.Add(-hardStopReserve(*r.cfg.Timeout))
	waitUntil(fetchDone, jobsBy)

	// Running jobs get the time left but what a hard stop needs.
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	if !waitUntil(done, jobsBy) {
		r.hardStop(cancelWork, done, deadline)
	}
	// What is left has until the deadline, or exitAllowance if the hard
	// stop used it all. Loops blocked on a Redis that does not answer are
	// not waited for past it: their calls end at their own timeouts.
	end := later(deadline, time.Now().Add(exitAllowance))
	r.stopBy.Store(end.UnixNano())
	loopsBy := end.Add(-minStopOp) // the final bookkeeping gets a round trip
	// The ack loop drains what is left before the heartbeat stops. Unacked
	// jobs stay in the private list and run again after recovery
	// (at-least-once).
	close(ackDone)
	stopAck := time.AfterFunc(time.Until(loopsBy), cancelAck)
	defer stopAck.Stop()
	waitUntil(ackExited, loopsBy)
	cancelBg()
	bgDone := make(chan struct{})
	go func() { bg.Wait(); close(bgDone) }()
	settled := waitUntil(bgDone, loopsBy) && waitUntil(fetchDone, loopsBy)

	final, cancelFinal := stopCtx(context.WithoutCancel(ctx), end)
	defer cancelFinal()
	// Anything still in our private lists is not running (e.g. taken by a
	// fetch whose reply was lost): push it back, as Sidekiq Pro does.
	if n, err := r.requeueUnknown(final, false); err != nil {
		r.log.Warn("could not push leftover in-flight jobs back; they will be recovered by another process", zap.Error(err))
	} else if n > 0 {
		r.log.Warn(fmt.Sprintf("Pushed %d leftover in-flight jobs back to Redis", n))
	}
	if err := r.broker.FlushStats(final, r.processed.Swap(0), r.failed.Swap(0)); err != nil {
		r.log.Warn("could not flush stats at exit", zap.Error(err))
	}
	if err := r.broker.FlushMetrics(final, r.metrics); err != nil { // as Sidekiq 8 does on :exit
		r.log.Warn("could not flush job metrics at exit", zap.Error(err))
	}
	if !settled {
		// A fetch still waiting for Redis may yet move a job into our
		// private list, and a heartbeat re-add us: stay registered, so
		// that recovery looks at the list; our entries expire.
		r.log.Warn("Redis did not answer in time; not unregistering, so that another process recovers whatever is left in this one's private lists")
	} else if err := r.broker.Unregister(final, r.info.Queues); err != nil {
		r.log.Warn("could not unregister", zap.Error(err))
	}
	r.log.Info("worker stopped", zap.String("identity", r.cfg.Identity))
	return nil
}

// exitAllowance is the least the acks, the background loops and the final
// bookkeeping get after a hard stop: with a healthy Redis they take
// milliseconds, but a hard stop may end at Timeout or just before.
const exitAllowance = time.Second

// minStopOp is the least a Redis call made while stopping gets, so that one
// made at or past its deadline still has a round trip.
const minStopOp = 100 * time.Millisecond

// stopCtx returns the context of a Redis call made while stopping: it ends
// at by, but no sooner than minStopOp from now. go-redis applies the
// deadline to socket reads and writes only with ContextTimeoutEnabled (see
// Config.Redis); without it a call Redis does not answer ends at the
// client's read timeout.
func stopCtx(parent context.Context, by time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(parent, later(by, time.Now().Add(minStopOp)))
}

// callBy is when a Redis call of at most limit must end: limit from now,
// or the stop's deadline (stopBy) once a stop began, if sooner.
func (r *Runtime) callBy(limit time.Duration) time.Time {
	by := time.Now().Add(limit)
	if s := r.stopBy.Load(); s != 0 && s < by.UnixNano() {
		return time.Unix(0, s)
	}
	return by
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitUntil waits for ch to be closed until t, and reports whether it was.
func waitUntil(ch <-chan struct{}, t time.Time) bool {
	if closed(ch) {
		return true
	}
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ch:
		return true
	case <-timer.C:
		return false
	}
}

// hardStop pushes every in-flight job back to its queue, then cancels them.
// Pushing back first means a job is never in limbo; a job that finishes in
// between just fails to ack (its entry is already gone), and runs again,
// which Sidekiq's at-least-once contract allows.
func (r *Runtime) hardStop(cancelWork context.CancelFunc, done <-chan struct{}, deadline time.Time) {
	r.mu.Lock()
	ds := make([]*sidekiq.Delivery, 0, len(r.inflight))
	for _, run := range r.inflight {
		if run.d != nil {
			ds = append(ds, run.d)
		}
	}
	r.mu.Unlock()
	// Half the reserve at most, so that cancelled jobs keep the other half
	// to return even when Redis does not answer.
	ctx, cancel := stopCtx(context.Background(), deadline.Add(-hardStopReserve(*r.cfg.Timeout)/2))
	defer cancel()
	if len(ds) > 0 { // the jobs may all have ended as the reserve began
		n, err := r.broker.Requeue(ctx, ds...)
		if err != nil {
			r.log.Error("could not push jobs back; they stay in this process's private list and will be recovered by another process",
				zap.Error(err))
		}
		r.log.Warn(fmt.Sprintf("Pushed %d jobs back to Redis", n), zap.Int("in_flight", len(ds)))
	}
	cancelWork()
	if !waitUntil(done, later(deadline, time.Now().Add(minCancelWait))) {
		r.log.Warn("some jobs ignored cancellation; exiting without them")
	}
}

// minCancelWait is how long cancelled jobs get to return even when pushing
// them back took the reserve.
const minCancelWait = 100 * time.Millisecond

// hardStopReserve is the part of Timeout kept for the hard stop: pushing
// the jobs back, then letting cancelled jobs return, which for a batch
// means recording how far it got (a transaction that waits for its
// migration's row lock). A quarter, at most 3 s (what Sidekiq gives its
// threads after a hard stop).
func hardStopReserve(timeout time.Duration) time.Duration {
	return min(timeout/4, 3*time.Second)
}

func (r *Runtime) fetchLoop(fetchCtx context.Context) {
	// Quiet or stop: jobs fetched ahead do not start; they go back to the
	// front of their queues, as jobs fetched after quiet do.
	defer r.returnReady()
	backoff := newBackoff()
	// A fetch whose reply was lost may have moved jobs into our private
	// list that no slot knows about; go-redis may even retry it and report
	// success. So after a fetch error, and every RecoveryInterval anyway,
	// look for such jobs and push them back. Jobs cancelled by lost
	// liveness are pushed back the same way once we are live again.
	dirty := false
	lastCheck := time.Now()
	_, epoch := r.live.current()
	pf := prefetcher{at: time.Now()}
	for fetchCtx.Err() == nil {
		gen, ok := r.live.wait(fetchCtx) // no fetching while we may not own jobs
		if !ok {
			return
		}
		if r.stranded.Swap(false) {
			dirty = true
		}
		if gen != epoch {
			// Jobs fetched ahead under the lost epoch are not ours to
			// run: drop them here, and requeueUnknown pushes them back.
			r.dropStaleReady()
			epoch, dirty = gen, true
		}
		if dirty || time.Since(lastCheck) >= r.cfg.RecoveryInterval {
			if _, err := r.requeueUnknown(fetchCtx, true); err != nil {
				if fetchCtx.Err() != nil {
					return
				}
				r.loopFailed(loopInflight, "could not check in-flight jobs after a fetch error; retrying", err)
				if !backoff.wait(fetchCtx) {
					return
				}
				continue
			}
			r.loopWorks(loopInflight)
			dirty = false
			lastCheck = time.Now()
		}
		target := pf.target(time.Now(), r.finished.Load(), r.ranNanos.Load(), r.cfg.Concurrency)
		if r.prefetchHook != nil && pf.deep {
			target = r.prefetchHook()
		}
		r.readyMark.Store(int64(target / 2))
		// Fetch ahead once half the target is free; wait only for a slot
		// (or for a slot to take ready down to the mark) until then.
		r.mu.Lock()
		room := target - len(r.ready)
		r.mu.Unlock()
		ids, ok := r.takeSlots(fetchCtx, target > 0, target > 0 && room >= (target+1)/2)
		if !ok {
			return
		}
		// A free slot runs what was fetched ahead before anything new:
		// no slot may idle while jobs wait in ready.
		ids = r.startReady(ids)
		r.mu.Lock()
		ahead := max(0, target-len(r.ready))
		r.mu.Unlock()
		if len(ids) == 0 && (ahead == 0 || ahead < (target+1)/2) {
			continue // woken early: enough fetched ahead still
		}
		ds, jobCtx, err := r.fetch(fetchCtx, len(ids)+ahead, len(ids) > 0)
		if jobCtx.Err() != nil {
			// Liveness was lost before or during the fetch: what it took
			// is not ours to run; it is pushed back once we are live again.
			r.releaseSlots(ids)
			dirty = true
			continue
		}
		if err != nil {
			// The fetch may have moved jobs into our private list before
			// the error (e.g. the connection dropped before the reply).
			dirty = true
		}
		if err != nil && fetchCtx.Err() == nil {
			r.loopFailed(loopFetch, "fetch failed; retrying", err)
			r.releaseSlots(ids)
			if !backoff.wait(fetchCtx) {
				return
			}
			continue
		}
		backoff.reset()
		if err == nil { // not a fetch cut short by a stop
			r.loopWorks(loopFetch)
		}
		// Fetch ahead only while the queues are deep: a fetch that came
		// back short found them (nearly) empty.
		pf.deep = len(ds) == len(ids)+ahead
		if fetchCtx.Err() != nil && len(ds) > 0 {
			// Fetched after quiet: push back, as Sidekiq does.
			ctx, cancel := stopCtx(context.Background(), r.callBy(5*time.Second))
			_ = r.pushBack(ctx, ds)
			cancel()
			ds = nil
		}
		n := min(len(ds), len(ids))
		if len(ds) > n {
			r.mu.Lock()
			for _, d := range ds[n:] {
				r.ready = append(r.ready, slotJob{ctx: jobCtx, d: d})
			}
			r.mu.Unlock()
		}
		for i, d := range ds[:n] {
			r.start(jobCtx, ids[i], d)
		}
		r.releaseSlots(ids[n:])
	}
}

// prefetcher decides how many jobs the fetch loop fetches ahead of free
// slots: what the slots run in prefetchHorizon at the mean run time of the
// jobs finished in the last prefetchWindow, at most prefetchMax ×
// Concurrency, and none while the queues are shallow. The run time, not
// the rate of completions, decides, so a busy host that delays round trips
// does not shrink the batches (which would add round trips). Long jobs
// give none: they keep Sidekiq's behaviour (a job leaves its queue only
// when a slot is free to run it).
type prefetcher struct {
	deep      bool
	at        time.Time // start of the current counting window
	from      int64     // finished jobs at its start
	fromNanos int64     // and their run time
	n         int
}

func (p *prefetcher) target(now time.Time, finished, ranNanos int64, concurrency int) int {
	if now.Sub(p.at) >= prefetchWindow {
		p.n = 0
		if n := finished - p.from; n > 0 {
			mean := max(1, float64(ranNanos-p.fromNanos)/float64(n))
			p.n = int(min(float64(prefetchMax*concurrency), float64(concurrency)*float64(prefetchHorizon)/mean))
		}
		p.at, p.from, p.fromNanos = now, finished, ranNanos
	}
	if !p.deep {
		return 0
	}
	return p.n
}

// takeSlots takes every free slot. Unless now is set, it first waits for
// one (or, when prefetching, for the jobs fetched ahead to run low).
func (r *Runtime) takeSlots(ctx context.Context, prefetch, now bool) ([]int, bool) {
	var low chan struct{}
	if prefetch {
		low = r.readyLow
	}
	ids := make([]int, 0, r.cfg.Concurrency)
	if !now {
		select {
		case <-ctx.Done():
			return nil, false
		case first := <-r.slots:
			ids = append(ids, first)
		case <-low:
		}
	}
	for len(ids) < r.cfg.Concurrency {
		select {
		case id := <-r.slots:
			ids = append(ids, id)
		default:
			return ids, true
		}
	}
	return ids, true
}

// fetch takes up to n jobs, acknowledging finished ones in the same round
// trip, and returns the context of the liveness epoch they belong to. It
// waits for a job only when block is set (a slot is free for it). The call
// is abandoned when liveness is lost.
func (r *Runtime) fetch(fetchCtx context.Context, n int, block bool) ([]*sidekiq.Delivery, context.Context, error) {
	jobCtx, _ := r.live.current()
	if jobCtx.Err() != nil {
		return nil, jobCtx, context.Cause(jobCtx)
	}
	ctx, cancel := context.WithCancel(fetchCtx)
	defer cancel()
	stop := context.AfterFunc(jobCtx, cancel)
	defer stop()
	r.ackMu.Lock()
	acks := r.ackPending
	r.ackPending = nil
	r.ackMu.Unlock()
	if len(acks) > 0 {
		r.ackRides.Add(1)
	}
	wait := 2 * time.Second
	if !block {
		wait = 0
	}
	ds, err := r.fetcher.FetchAndAck(ctx, acks, n, wait)
	if err != nil && len(acks) > 0 { // not known to be written: the ack loop retries
		r.ackMu.Lock()
		r.ackPending = append(acks, r.ackPending...)
		r.ackMu.Unlock()
		r.wakeAcks()
	}
	return ds, jobCtx, err
}

func (r *Runtime) releaseSlots(ids []int) {
	for _, id := range ids {
		r.slots <- id
	}
}

// returnReady pushes the jobs fetched ahead back to the front of their
// queues (the fetch loop has ended, so nothing adds to them).
func (r *Runtime) returnReady() {
	r.mu.Lock()
	ready := r.ready
	r.ready = nil
	r.mu.Unlock()
	if len(ready) == 0 {
		return
	}
	ds := make([]*sidekiq.Delivery, len(ready))
	for i, j := range ready {
		ds[i] = j.d
	}
	ctx, cancel := stopCtx(context.Background(), r.callBy(5*time.Second))
	defer cancel()
	if err := r.pushBack(ctx, ds); err != nil {
		r.log.Warn("could not push jobs fetched ahead back; they stay in this process's private list and are pushed back at exit or recovered by another process",
			zap.Error(err))
	}
}

// pushBack puts jobs fetched but not started back at the front of their
// queues in the order they were fetched: each goes to the front, so the
// oldest goes last.
func (r *Runtime) pushBack(ctx context.Context, ds []*sidekiq.Delivery) error {
	slices.Reverse(ds)
	_, err := r.broker.Requeue(ctx, ds...)
	return err
}

// startReady starts jobs fetched ahead on the free slots ids, and returns
// the slots left free.
func (r *Runtime) startReady(ids []int) []int {
	var started []slotJob
	r.mu.Lock()
	// After a stop, as in next.
	for len(ids) > len(started) && len(r.ready) > 0 && !closed(r.stopCh) {
		j := r.ready[0]
		r.ready[0] = slotJob{}
		r.ready = r.ready[1:]
		if j.ctx.Err() != nil {
			r.stranded.Store(true) // as in next
			continue
		}
		r.inflight[ids[len(started)]] = running{d: j.d, runAt: time.Now()}
		r.ranAhead.Add(1)
		r.wg.Add(1)
		started = append(started, j)
	}
	r.mu.Unlock()
	for i, j := range started {
		r.slotWork[ids[i]] <- j
	}
	return ids[len(started):]
}

// dropStaleReady forgets jobs fetched ahead under a lost liveness epoch.
func (r *Runtime) dropStaleReady() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ready = slices.DeleteFunc(r.ready, func(j slotJob) bool { return j.ctx.Err() != nil })
}

// start hands d to the goroutine of a free slot. Slot goroutines live as
// long as Run, so a job does not pay for a new goroutine and its stack.
func (r *Runtime) start(ctx context.Context, slot int, d *sidekiq.Delivery) {
	r.mu.Lock()
	r.inflight[slot] = running{d: d, runAt: time.Now()}
	r.mu.Unlock()
	r.wg.Add(1)
	r.slotWork[slot] <- slotJob{ctx: ctx, d: d}
}

func (r *Runtime) slotLoop(slot int) {
	for j := range r.slotWork[slot] {
		for ok := true; ok; {
			r.process(j.ctx, j.d)
			j, ok = r.next(slot)
			r.wg.Done()
		}
		r.slots <- slot
	}
}

// next frees slot and, if a job was fetched ahead, starts it on the slot
// in the same step (so it is never in neither place).
func (r *Runtime) next(slot int) (slotJob, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight[slot] = running{}
	// After a stop, jobs fetched ahead do not start: the fetch loop pushes
	// them back as it ends.
	for len(r.ready) > 0 && !closed(r.stopCh) {
		j := r.ready[0]
		r.ready[0] = slotJob{}
		r.ready = r.ready[1:]
		if int64(len(r.ready)) <= r.readyMark.Load() {
			select {
			case r.readyLow <- struct{}{}:
			default:
			}
		}
		if j.ctx.Err() != nil {
			// Liveness was lost since it was fetched: it stays in the
			// private list and the fetch loop pushes it back.
			r.stranded.Store(true)
			continue
		}
		r.inflight[slot] = running{d: j.d, runAt: time.Now()}
		r.ranAhead.Add(1)
		r.wg.Add(1) // before the caller's Done, so the count never touches 0
		return j, true
	}
	return slotJob{}, false
}

func (r *Runtime) process(ctx context.Context, d *sidekiq.Delivery) {
	ctx = context.WithValue(ctx, stoppingKey{}, r.stopCh)
	d.Parse()
	if d.Job == nil {
		// Unparseable payloads go straight to the dead set, as in Sidekiq.
		r.log.Error("invalid job payload; moved to the dead set", zap.String("queue", d.Queue), zap.Error(d.Err))
		r.settleFailure(ctx, d, sidekiq.Failure{})
		return
	}
	start := time.Now()
	err := r.runJob(ctx, d.Job)
	took := time.Since(start)
	r.finished.Add(1)
	r.ranNanos.Add(int64(took))
	if err == nil || !isUnknownClass(err) { // Sidekiq tracks only classes it loaded
		r.metrics.Record(d.Job, took, err != nil)
	}
	r.processed.Add(1)
	if ctx.Err() != nil && err != nil {
		// Hard shutdown: the job was already pushed back. Lost liveness:
		// it stays in our private list, to be pushed back by the fetch
		// loop once we are live again, or recovered by another process.
		// Either way record nothing but the counts (Sidekiq counts its
		// Shutdown as a failure): it runs again.
		r.failed.Add(1)
		if errors.Is(context.Cause(ctx), ErrLivenessLost) {
			r.stranded.Store(true)
		}
		return
	}
	switch {
	case err == nil:
		r.ack(d)
		return
	case errors.Is(err, ErrDiscard):
		r.failed.Add(1)
		r.ack(d)
		return
	}
	r.failed.Add(1)
	f := sidekiq.Failure{Class: errorClass(err), Message: err.Error()}
	var pe *PanicError
	if errors.As(err, &pe) {
		f.Backtrace = pe.Stack
	}
	f.Kill = errors.Is(err, ErrKill)
	r.log.Warn("job failed", zap.String("class", d.Job.Class()), zap.String("jid", d.Job.JID()),
		zap.String("error_class", f.Class), zap.Error(err))
	r.settleFailure(ctx, d, f)
}

// settleFailure records a failure, retrying Redis errors so that a short
// outage does not lose the retry entry (the job stays in the private list
// until it succeeds, so nothing is lost even if this process dies).
func (r *Runtime) settleFailure(ctx context.Context, d *sidekiq.Delivery, f sidekiq.Failure) {
	bo := newBackoff()
	for {
		out, _, err := r.broker.Fail(context.WithoutCancel(ctx), d, f)
		if err == nil {
			if out == sidekiq.OutcomeDead {
				r.log.Warn("job moved to the dead set", zap.String("jid", jidOf(d)))
			}
			return
		}
		r.log.Warn("could not record job failure; retrying", zap.Error(err))
		if !bo.wait(ctx) {
			return
		}
	}
}

func jidOf(d *sidekiq.Delivery) string {
	if d.Job == nil {
		return ""
	}
	return d.Job.JID()
}

func (r *Runtime) runJob(ctx context.Context, p *sidekiq.Job) (err error) {
	defer func() {
		if v := recover(); v != nil {
			stack := strings.Split(strings.TrimSpace(string(debug.Stack())), "\n")
			err = &PanicError{Value: v, Stack: stack}
		}
	}()
	final := func(ctx context.Context) error {
		e := r.cfg.Registry.lookup(p.Class())
		if e == nil {
			return &UnknownClassError{Class: p.Class()}
		}
		return e.run(ctx, p)
	}
	next := final
	for i := len(r.cfg.Middleware) - 1; i >= 0; i-- {
		mw, inner := r.cfg.Middleware[i], next
		next = func(ctx context.Context) error { return mw(ctx, p, inner) }
	}
	return next(ctx)
}

// ack queues a finished job for the ack loop; it never blocks, so a slow
// or unreachable Redis cannot hold a slot or a shutdown.
func (r *Runtime) ack(d *sidekiq.Delivery) {
	r.ackMu.Lock()
	r.ackPending = append(r.ackPending, d)
	r.ackMu.Unlock()
	r.wakeAcks()
}

func (r *Runtime) hasPendingAcks() bool {
	r.ackMu.Lock()
	defer r.ackMu.Unlock()
	return len(r.ackPending) > 0
}

func (r *Runtime) wakeAcks() {
	select {
	case r.ackWake <- struct{}{}:
	default:
	}
}

// ackDelay is how long the ack loop leaves finished jobs for the fetch loop
// to acknowledge along with its next fetch; after it, the ack loop writes
// them itself (e.g. when the queues are empty and the fetch loop blocks).
const ackDelay = 2 * time.Millisecond

// ackLoop batches acknowledgements into pipelines: one round trip for all
// jobs finished since the last one keeps Redis work per job low. After
// done is closed it flushes what is left and returns; ctx bounds that.
func (r *Runtime) ackLoop(ctx context.Context, done <-chan struct{}) {
	delay := time.NewTimer(ackDelay)
	for {
		select {
		case <-r.ackWake:
			// While fetches carry acks (jobs keep coming), leave them to
			// the fetches: a pipeline of its own would be one more round
			// trip. Write them only after a delay without such a fetch.
			for {
				rides := r.ackRides.Load()
				delay.Reset(ackDelay)
				select {
				case <-delay.C:
				case <-done:
					r.flushAcks(ctx)
					return
				}
				if r.ackRides.Load() == rides || !r.hasPendingAcks() {
					break
				}
			}
			r.flushAcks(ctx)
		case <-done:
			r.flushAcks(ctx)
			return
		}
	}
}

// flushAcks writes pending acks until none are left, retrying Redis errors
// until ctx ends.
func (r *Runtime) flushAcks(ctx context.Context) {
	bo := newBackoff()
	var spare []*sidekiq.Delivery
	for {
		r.ackMu.Lock()
		batch := r.ackPending
		r.ackPending, r.ackFlushing = spare, batch
		r.ackMu.Unlock()
		if len(batch) == 0 {
			return
		}
		for {
			fctx, cancel := stopCtx(ctx, r.callBy(5*time.Second))
			err := r.broker.Ack(fctx, batch...)
			cancel()
			if err == nil {
				r.loopWorks(loopAck)
				break
			}
			r.loopFailed(loopAck, "ack failed; retrying", err)
			if !bo.wait(ctx) {
				// Keep them pending (known to reconcile); they stay in
				// the private list in Redis.
				r.ackMu.Lock()
				r.ackPending = append(batch, r.ackPending...)
				r.ackFlushing = nil
				r.ackMu.Unlock()
				return
			}
		}
		clear(batch)
		spare = batch[:0]
		r.ackMu.Lock()
		r.ackFlushing = nil
		r.ackMu.Unlock()
	}
}

// requeueUnknown pushes back every job in this process's private lists
// that no slot is running and no pending ack covers. It runs in the fetch
// loop (or after it ended), so no fetch races with it. With onlyUnknown
// false (at exit) it pushes back everything not awaiting an ack.
func (r *Runtime) requeueUnknown(ctx context.Context, onlyUnknown bool) (int, error) {
	known := make(map[string]int)
	if onlyUnknown {
		r.mu.Lock()
		for _, run := range r.inflight {
			if run.d != nil {
				known[string(run.d.Raw)]++
			}
		}
		for _, j := range r.ready {
			known[string(j.d.Raw)]++
		}
		r.mu.Unlock()
	}
	r.ackMu.Lock()
	for _, d := range r.ackPending {
		known[string(d.Raw)]++
	}
	for _, d := range r.ackFlushing {
		known[string(d.Raw)]++
	}
	r.ackMu.Unlock()
	var orphans []*sidekiq.Delivery
	for _, q := range r.info.Queues {
		ds, err := r.broker.InFlight(ctx, q)
		if err != nil {
			return 0, err
		}
		for _, d := range ds {
			if known[string(d.Raw)] > 0 {
				known[string(d.Raw)]--
				continue
			}
			orphans = append(orphans, d)
		}
	}
	if len(orphans) == 0 {
		return 0, nil
	}
	return r.broker.Requeue(ctx, orphans...)
}

func (r *Runtime) heartbeatLoop(ctx context.Context) {
	// A failed beat is retried within a second, not a whole interval
	// later, so a short outage never costs the process its liveness.
	rng := newRand()
	retry := min(r.cfg.HeartbeatInterval, time.Second)
	wait := r.cfg.HeartbeatInterval
	for {
		if !sleep.For(ctx, wait) {
			return
		}
		r.loopAt.Store(time.Now().UnixNano())
		if err := r.beat(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.loopFailed(loopHeartbeat, "heartbeat failed", err)
			wait = retry/2 + time.Duration(rng.Int64N(int64(retry/2)+1))
			continue
		}
		r.loopWorks(loopHeartbeat)
		r.live.refreshed()
		wait = r.cfg.HeartbeatInterval
	}
}

// metricsLoop flushes the per-class job metrics every heartbeat interval.
// It is not part of the heartbeat, so a slow metrics write can never delay
// a liveness refresh.
func (r *Runtime) metricsLoop(ctx context.Context) {
	for sleep.For(ctx, r.cfg.HeartbeatInterval) {
		switch err := r.broker.FlushMetrics(ctx, r.metrics); {
		case err == nil:
			r.loopWorks(loopMetrics)
		case ctx.Err() == nil:
			r.loopFailed(loopMetrics, "could not flush job metrics; keeping them for the next try", err)
		}
	}
}

func (r *Runtime) beat(ctx context.Context) error {
	st := sidekiq.BeatState{Work: map[string]sidekiq.WorkEntry{}, RSSKB: rssKB()}
	select {
	case <-r.quietCh:
		st.Quiet = true
	default:
	}
	r.mu.Lock()
	for slot, run := range r.inflight {
		if run.d != nil {
			st.Work[strconv.Itoa(slot)] = sidekiq.WorkEntry{Queue: run.d.Queue, Payload: run.d.Raw, RunAt: run.runAt}
		}
	}
	r.mu.Unlock()
	st.Busy = len(st.Work)
	st.Processed = r.processed.Swap(0)
	st.Failed = r.failed.Swap(0)
	sigs, err := r.broker.Heartbeat(ctx, r.info, st)
	if err != nil {
		// Keep the counts for the next beat.
		r.processed.Add(st.Processed)
		r.failed.Add(st.Failed)
		return err
	}
	for _, s := range sigs {
		r.signal(s)
	}
	return nil
}

// signal handles a Sidekiq signal sent through Redis.
func (r *Runtime) signal(sig string) {
	r.log.Info("received signal via Redis", zap.String("signal", sig))
	switch sig {
	case "TSTP", "USR1":
		r.Quiet()
	case "TERM", "INT":
		r.Stop()
	case "TTIN":
		r.DumpGoroutines()
	default:
		r.log.Warn("ignoring unknown signal", zap.String("signal", sig))
	}
}

// DumpGoroutines logs every goroutine's stack (Sidekiq's TTIN).
func (r *Runtime) DumpGoroutines() {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	r.log.Info("goroutine dump", zap.String("stacks", string(buf[:n])))
}

func (r *Runtime) pollLoop(ctx context.Context) {
	rng := newRand() // not shared: *rand.Rand is not safe for concurrent use
	wait := sidekiq.PollInterval(1, r.cfg.PollInterval, rng)
	for {
		if !sleep.For(ctx, wait) {
			return
		}
		switch n, err := r.broker.EnqueueDue(ctx); {
		case err == nil:
			r.loopWorks(loopPoll)
			if n > 0 {
				r.log.Debug("enqueued due jobs", zap.Int("count", n))
			}
		case ctx.Err() == nil:
			r.loopFailed(loopPoll, "scheduled poll failed", err)
		}
		if n, err := r.broker.PruneProcesses(ctx); err != nil && ctx.Err() == nil {
			r.log.Debug("could not prune dead processes", zap.Error(err))
		} else if n > 0 {
			r.log.Info("removed dead processes from the processes set", zap.Int("count", n))
		}
		wait = sidekiq.PollInterval(r.broker.ProcessCount(ctx), r.cfg.PollInterval, rng)
	}
}

func (r *Runtime) recoveryLoop(ctx context.Context) {
	rng := newRand()
	wait := time.Duration(rng.Int64N(int64(time.Second)))
	for {
		if !sleep.For(ctx, wait) {
			return
		}
		res, err := r.broker.RecoverOrphans(ctx)
		switch {
		case err == nil || errors.Is(err, sidekiq.ErrLocked):
			r.loopWorks(loopRecovery)
		case ctx.Err() == nil:
			r.loopFailed(loopRecovery, "orphan recovery failed", err)
		}
		// Jitter so processes do not all contend for the lock at once.
		wait = r.cfg.RecoveryInterval/2 + time.Duration(rng.Int64N(int64(r.cfg.RecoveryInterval)))
		if res.RetryIn > 0 {
			// A process found missing becomes recoverable then: look
			// again right after, not up to a whole interval later.
			wait = min(wait, res.RetryIn+time.Duration(rng.Int64N(int64(100*time.Millisecond))))
		}
	}
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// backoff is a capped, jittered exponential wait for reconnecting.
type backoff struct{ n int }

func newBackoff() *backoff { return &backoff{} }
func (b *backoff) reset()  { b.n = 0 }
func (b *backoff) wait(ctx context.Context) bool {
	d := min(50*time.Millisecond<<min(b.n, 7), 5*time.Second)
	b.n++
	return sleep.For(ctx, d/2+time.Duration(rand.Int64N(int64(d))))
}

func rssKB() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize()) / 1024
}
