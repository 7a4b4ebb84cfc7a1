package sidekiq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/sleep"
)

// Steal: take the jobs of one Sidekiq class whose first argument matches
// out of Redis and run them in this process (GitLab's
// Gitlab::BackgroundMigration.steal, gitlab-background-migrations.md §6.3).
//
// Sidekiq's API does this by iterating each set and deleting jobs one by one
// (LREM/ZREM per job), which is O(n²) on a list. Here each source is
// partitioned by a Lua script in chunks, in one pass:
//
//   - a queue is popped from its oldest end, matching jobs are moved into a
//     private list and the others into a hold list that is appended back to
//     the oldest end afterwards, so the queue keeps its order;
//   - a sorted set is walked with ZSCAN and each matching member that the
//     script itself removed is moved into the private list with its score.
//
// The pop/remove and the move happen in one script, so a job is always in
// exactly one place and two concurrent steals can never both own it. Jobs
// are then performed from the private list and removed from it once done;
// on an error, the job and every other stolen job still pending are put
// back where they came from (queue, or sorted set with the same score).
// A steal refreshes a liveness key; if its process dies, the next steal
// (from any process) puts its jobs back first.

// StealSource names where a stolen job came from.
type StealSource string

// Sources, in the order a steal visits them (GitLab's pending_jobs order).
const (
	SourceSchedule StealSource = "schedule"
	SourceQueue    StealSource = "queue"
	SourceRetry    StealSource = "retry"
	SourceDead     StealSource = "dead"
)

// StealOptions select the jobs to steal.
type StealOptions struct {
	// Class is the Sidekiq class ("BackgroundMigrationWorker") and Arg0 the
	// value its first argument must equal (the migration class).
	Class string
	Arg0  string
	// Queue is the queue list to scan (without "queue:"); Queues, when
	// set, are several, scanned in order (Queue is then ignored).
	Queue  string
	Queues []string
	// RetryDead also steals from the retry and dead sets.
	RetryDead bool
	// Concurrency is how many stolen jobs are performed at once (default
	// 1). Jobs start in the order of Steal's sources.
	Concurrency int
	// KeepGoing puts a failing job back where it came from and goes on
	// with the others; Steal then returns a *StealFailures. Without it the
	// first failure stops the steal and every job not performed is put
	// back.
	KeepGoing bool
	// PerformBatch, if set, is offered runs of consecutive stolen jobs
	// (at most StealBatch) to perform together, all or none. On an error
	// the run's jobs are performed one by one with perform instead, so
	// failures are still told job by job; see ErrNoBatch and
	// ErrBatchOutcomeUnknown for the two exceptions.
	PerformBatch func(context.Context, []*StolenJob) error
	// Chunk bounds the work one Lua call does (default 1000), so Redis is
	// never blocked for long whatever the size of a set.
	Chunk int
	// AliveTTL is how long the steal counts as alive after its last
	// refresh; default 30 s.
	AliveTTL time.Duration
	// Progress, if set, is called after each source has been partitioned
	// and after each performed or failed job, never concurrently.
	Progress func(StealProgress)
	Logger   *zap.Logger
}

// StealProgress reports a steal's progress through one source.
type StealProgress struct {
	Source StealSource
	Done   int // jobs of this source performed (or failed) so far
	Total  int // jobs stolen from this source
	Failed int // jobs of this source that failed (KeepGoing)
}

// StolenJob is one job a steal owns.
type StolenJob struct {
	Source StealSource
	Key    string // Redis key it came from
	Score  string // its score in a sorted set; "" for a queue
	Raw    []byte // exact bytes, as found
	Job    *Job   // nil if Raw does not parse (see Err)
	Err    error
}

// StealResult counts what a steal did.
type StealResult struct {
	Stolen    map[StealSource]int
	Performed int
	// Returned is how many stolen jobs were put back after an error.
	Returned int
	// Failed are the jobs that failed and were put back (KeepGoing).
	Failed []StealFailure
}

// StealFailure is one job that failed during a KeepGoing steal.
type StealFailure struct {
	JID    string      `json:"jid"`
	Source StealSource `json:"source"`
	Error  string      `json:"error"`
}

// ErrStealFailed matches the error of a steal whose perform failed.
var ErrStealFailed = errors.New("steal: job failed")

// StealError is returned when performing a stolen job failed. The job and
// every other stolen job not yet performed have been put back.
type StealError struct {
	Job *StolenJob
	Err error
	env string // its envelope in the private list
}

func (e *StealError) Error() string {
	jid := ""
	if e.Job.Job != nil {
		jid = " " + e.Job.Job.JID()
	}
	return fmt.Sprintf("job%s from %s failed and was pushed back: %v", jid, e.Job.Source, e.Err)
}
func (e *StealError) Unwrap() error        { return e.Err }
func (e *StealError) Is(target error) bool { return target == ErrStealFailed }

// StealFailures is returned by a KeepGoing steal in which jobs failed:
// each was put back where it came from, the others were performed.
type StealFailures struct{ Failed []StealFailure }

func (e *StealFailures) Error() string {
	f := e.Failed[0]
	return fmt.Sprintf("%d job(s) failed and were put back where they came from; first: job %s from %s: %s",
		len(e.Failed), f.JID, f.Source, f.Error)
}
func (e *StealFailures) Is(target error) bool { return target == ErrStealFailed }

// Steal moves the matching jobs of each source into a private list and
// calls perform for each in GitLab's order: the scheduled set by time, the
// queues (oldest end first), then (with RetryDead) the retry and dead
// sets. It returns a *StealError when perform fails, or with KeepGoing a
// *StealFailures once every other job ran.
func Steal(ctx context.Context, rdb redis.UniversalClient, opts StealOptions, perform func(context.Context, *StolenJob) error) (res StealResult, err error) {
	res.Stolen = map[StealSource]int{}
	if len(opts.Queues) == 0 && opts.Queue != "" {
		opts.Queues = []string{opts.Queue}
	}
	if opts.Class == "" || len(opts.Queues) == 0 {
		return res, errors.New("steal: Class and Queue are required")
	}
	opts.Concurrency = max(opts.Concurrency, 1)
	if opts.Chunk <= 0 {
		opts.Chunk = 1000
	}
	if opts.AliveTTL <= 0 {
		opts.AliveTTL = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &stealer{rdb: rdb, opts: opts, id: NewJID(), log: opts.Logger.Named("steal"), holdQueue: opts.Queues[0]}
	s.private, s.hold = stealPrivateKey(s.id), stealHoldKey(s.id)
	s.nW, s.nC = needle(opts.Class), needle(opts.Arg0)

	if _, err := s.recoverDead(ctx); err != nil {
		return res, err
	}
	if err := s.register(ctx); err != nil {
		return res, err
	}
	aliveCtx, stopAlive := context.WithCancel(ctx)
	aliveDone := make(chan struct{})
	go func() { defer close(aliveDone); s.keepAlive(aliveCtx) }()
	defer func() {
		stopAlive()
		<-aliveDone
		s.unregister(ctx, &res)
	}()

	for waited, again := false, true; ; {
		// One pass, and another only when jobs came back from a dead
		// steal: a pass scans whole queues.
		if again {
			if err := s.round(ctx, perform, &res); err != nil {
				return res, err
			}
		}
		// Jobs of the class another steal took are not done yet: wait
		// until it ran them, or, if its process died (kill -9), until its
		// liveness lapses and its jobs come back here to run.
		held, err := s.othersHolding(ctx)
		if err != nil || held == 0 {
			if err != nil {
				s.log.Warn("could not look for jobs other steals hold", zap.Error(err))
			}
			break
		}
		if !waited {
			s.log.Warn("another steal holds jobs of this migration: waiting until it has run them or, if its process died, "+
				"until its liveness lapses (at most "+opts.AliveTTL.String()+") to run them here",
				zap.Int("jobs", held), zap.String("class", opts.Class), zap.String("arg0", opts.Arg0))
			waited = true
		}
		if !sleep.For(ctx, time.Second) {
			return res, ctx.Err()
		}
		n, err := s.recoverDead(ctx)
		if err != nil {
			return res, err
		}
		again = n > 0
	}
	if len(res.Failed) > 0 {
		return res, &StealFailures{Failed: res.Failed}
	}
	return res, nil
}

// recoverDead puts back the jobs of steals whose process died
// (RecoverSteals) and says so.
func (s *stealer) recoverDead(ctx context.Context) (int, error) {
	n, err := RecoverSteals(ctx, s.rdb, s.opts.Logger)
	if n > 0 {
		s.log.Warn("pushed back jobs of steals whose process died", zap.Int("jobs", n))
	}
	return n, err
}

// round visits every source once: moves the matching jobs into the
// private list and performs them.
func (s *stealer) round(ctx context.Context, perform func(context.Context, *StolenJob) error, res *StealResult) error {
	for _, src := range s.sources() {
		n, err := s.move(ctx, src)
		res.Stolen[src.source] += n
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		s.log.Info("stole jobs", zap.String("source", string(src.source)), zap.String("key", src.key), zap.Int("jobs", n),
			zap.String("class", s.opts.Class), zap.String("arg0", s.opts.Arg0))
		if s.opts.Progress != nil {
			s.opts.Progress(StealProgress{Source: src.source, Total: n})
		}
		if err := s.drain(ctx, src.source, n, perform, res); err != nil {
			return err
		}
	}
	return nil
}

// othersHolding counts the jobs of this steal's class and migration that
// other steals (alive or not yet known dead) hold in their private lists.
func (s *stealer) othersHolding(ctx context.Context) (int, error) {
	held, err := heldBySteals(ctx, s.rdb, s.id)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, raw := range held {
		if cls, a0, ok := classAndArg0(raw); ok && cls == s.opts.Class && (s.opts.Arg0 == "" || a0 == s.opts.Arg0) {
			n++
		}
	}
	return n, nil
}

// heldBySteals returns the payloads in the private lists of every steal
// but except (a steal's own id, or "").
func heldBySteals(ctx context.Context, rdb redis.UniversalClient, except string) ([]string, error) {
	ids, err := rdb.HKeys(ctx, keySteals).Result()
	if err != nil {
		return nil, fmt.Errorf("steal: list steals: %w", err)
	}
	var out []string
	for _, id := range ids {
		if id == except {
			continue
		}
		envs, err := rdb.LRange(ctx, stealPrivateKey(id), 0, -1).Result()
		if err != nil {
			return nil, fmt.Errorf("steal: read %s: %w", stealPrivateKey(id), err)
		}
		for _, env := range envs {
			if sj := parseEnvelope(env); sj.Err == nil {
				out = append(out, string(sj.Raw))
			}
		}
	}
	return out, nil
}

// classAndArg0 reads a payload's class and its first argument when that is
// a string.
func classAndArg0(raw string) (class, arg0 string, ok bool) {
	var j struct {
		Class string            `json:"class"`
		Args  []json.RawMessage `json:"args"`
	}
	if json.Unmarshal([]byte(raw), &j) != nil || j.Class == "" {
		return "", "", false
	}
	if len(j.Args) > 0 {
		_ = json.Unmarshal(j.Args[0], &arg0)
	}
	return j.Class, arg0, true
}

// stealSource is one place a steal visits: a source kind and its key.
type stealSource struct {
	source StealSource
	key    string
	queue  string // for a queue
}

// sources lists the places to visit in GitLab's order (JobCoordinator's
// pending_jobs, and CONTRACT.md): the scheduled set (walked by score),
// then the queues, then with RetryDead the retry and dead sets.
func (s *stealer) sources() []stealSource {
	out := []stealSource{{source: SourceSchedule, key: keySchedule}}
	for _, q := range s.opts.Queues {
		out = append(out, stealSource{source: SourceQueue, key: QueueKey(q), queue: q})
	}
	if s.opts.RetryDead {
		out = append(out, stealSource{source: SourceRetry, key: keyRetry}, stealSource{source: SourceDead, key: keyDead})
	}
	return out
}

type stealer struct {
	rdb           redis.UniversalClient
	opts          StealOptions
	id            string
	private, hold string
	nW, nC        string
	log           *zap.Logger
	// holdQueue is the queue the hold list belongs to (the one being
	// partitioned); keySteals names it too, for recovery.
	holdQueue string
	// noBatch: PerformBatch said ErrNoBatch; jobs go one by one from then.
	noBatch atomic.Bool
}

func (s *stealer) register(ctx context.Context) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, stealAliveKey(s.id), "1", s.opts.AliveTTL)
		p.HSet(ctx, keySteals, s.id, s.opts.Queues[0])
		return nil
	})
	if err != nil {
		return fmt.Errorf("steal: register: %w", err)
	}
	return nil
}

func (s *stealer) keepAlive(ctx context.Context) {
	t := time.NewTicker(s.opts.AliveTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.rdb.Set(ctx, stealAliveKey(s.id), "1", s.opts.AliveTTL).Err(); err != nil && ctx.Err() == nil {
				s.log.Warn("could not refresh steal liveness", zap.Error(err))
			}
		}
	}
}

// unregister puts back whatever is left (after an error or cancellation)
// and removes the steal's keys. If Redis is unreachable the keys stay and
// the next steal recovers them once the liveness key lapses.
func (s *stealer) unregister(ctx context.Context, res *StealResult) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	n, err := restoreHold(cctx, s.rdb, s.hold, s.holdQueue, s.opts.Chunk)
	if err == nil {
		var m int
		m, err = returnAll(cctx, s.rdb, s.private, s.opts.Chunk)
		n += m
	}
	res.Returned += n
	if err != nil {
		s.log.Error("could not push stolen jobs back; the next steal will once this one's liveness key expires",
			zap.String("steal", s.id), zap.Error(err))
		return
	}
	s.rdb.HDel(cctx, keySteals, s.id)
	s.rdb.Del(cctx, stealAliveKey(s.id))
}

// move partitions one source into the private list and returns how many
// jobs it stole.
func (s *stealer) move(ctx context.Context, src stealSource) (int, error) {
	if src.source != SourceQueue {
		return s.moveZset(ctx, src.key)
	}
	if src.queue != s.holdQueue {
		// The hold list is empty between queues; point recovery at this one.
		if err := s.rdb.HSet(ctx, keySteals, s.id, src.queue).Err(); err != nil {
			return 0, fmt.Errorf("steal: register: %w", err)
		}
		s.holdQueue = src.queue
	}
	key := src.key
	budget, err := s.rdb.LLen(ctx, key).Result()
	if err != nil {
		return 0, fmt.Errorf("steal: %s: %w", key, err)
	}
	stolen := 0
	for budget > 0 {
		take := min(int64(s.opts.Chunk), budget)
		r, err := stealListScript.Run(ctx, s.rdb, []string{key, s.hold, s.private},
			s.opts.Class, s.opts.Arg0, s.nW, s.nC, s.opts.Chunk, budget, key+"\n\n").Int64Slice()
		if err != nil {
			// unregister restores the hold list.
			return stolen, fmt.Errorf("steal: %s: %w", key, err)
		}
		stolen += int(r[1])
		budget -= r[0]
		if r[0] < take {
			break // the queue ran dry (workers are consuming it too)
		}
	}
	if _, err := restoreHold(ctx, s.rdb, s.hold, src.queue, s.opts.Chunk); err != nil {
		return stolen, err
	}
	return stolen, nil
}

// moveZset walks a sorted set by score, so the private list gets its jobs
// in the order they are due. The cursor is (score, members kept at that
// score): stolen members leave the set, so members removed by others
// (the poller, other steals) cannot make the walk skip one.
func (s *stealer) moveZset(ctx context.Context, key string) (int, error) {
	last, kept := "-inf", 0
	stolen := 0
	for {
		r, err := stealZsetScript.Run(ctx, s.rdb, []string{key, s.private},
			last, kept, s.opts.Chunk, s.opts.Class, s.opts.Arg0, s.nW, s.nC, key).Slice()
		if err != nil {
			return stolen, fmt.Errorf("steal: %s: %w", key, err)
		}
		last, _ = r[0].(string)
		k, _ := r[1].(int64)
		n, _ := r[2].(int64)
		seen, _ := r[3].(int64)
		kept = int(k)
		stolen += int(n)
		if seen < int64(s.opts.Chunk) {
			return stolen, nil
		}
	}
}

// drainBatch is how many stolen jobs are read per round trip, at least;
// their removal once performed is one pipelined round trip too. A crash
// between a perform and its removal runs that job again after recovery
// (Sidekiq's at-least-once), so keep it small.
const drainBatch = 100

// drain performs the stolen jobs from the head of the private list, a page
// at a time, Concurrency at once, in list order.
func (s *stealer) drain(ctx context.Context, src StealSource, total int, perform func(context.Context, *StolenJob) error, res *StealResult) error {
	d := &drainer{s: s, src: src, total: total, perform: perform, res: res}
	for {
		page := int64(max(drainBatch, 4*s.opts.Concurrency))
		if s.batching() {
			page = int64(max(drainBatch, StealBatch*s.opts.Concurrency))
		}
		envs, err := s.rdb.LRange(ctx, s.private, 0, page-1).Result()
		if err != nil {
			return fmt.Errorf("steal: read private list: %w", err)
		}
		if len(envs) == 0 {
			return nil
		}
		ok, failed := d.page(ctx, envs)
		if err := s.settle(ctx, ok, failed, res); err != nil {
			return err
		}
		if !s.opts.KeepGoing && len(failed) > 0 {
			f := failed[0]
			// Info, not Warn: the caller reports the failure as its error,
			// which should be the first thing an operator reads.
			s.log.Info("stolen job failed; pushing it and the rest back", zap.String("source", string(f.Job.Source)), zap.Error(f.Err))
			return f // unregister pushes everything back
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// settle removes the performed jobs from the private list and, with
// KeepGoing, puts the failed ones back where they came from.
func (s *stealer) settle(ctx context.Context, ok []string, failed []*StealError, res *StealResult) error {
	// Without cancellation: these jobs ran, so their removal must not be
	// skipped because the operator pressed ^C meanwhile.
	rctx := context.WithoutCancel(ctx)
	if len(ok) > 0 {
		if _, err := s.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
			for _, env := range ok {
				p.LRem(rctx, s.private, 1, env)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("steal: remove performed jobs: %w", err)
		}
	}
	if !s.opts.KeepGoing {
		return nil
	}
	for _, f := range failed {
		if _, err := returnOne(rctx, s.rdb, s.private, f.env); err != nil {
			return fmt.Errorf("steal: put back a failed job: %w", err)
		}
		res.Returned++
		jid := ""
		if f.Job.Job != nil {
			jid = f.Job.Job.JID()
		}
		res.Failed = append(res.Failed, StealFailure{JID: jid, Source: f.Job.Source, Error: f.Err.Error()})
		s.log.Info("stolen job failed; put back where it came from", zap.String("jid", jid),
			zap.String("source", string(f.Job.Source)), zap.Error(f.Err))
	}
	return nil
}

// drainer performs pages of stolen jobs.
type drainer struct {
	s       *stealer
	src     StealSource
	total   int
	perform func(context.Context, *StolenJob) error
	res     *StealResult

	mu           sync.Mutex
	done, failed int
}

// StealBatch is the most jobs offered to StealOptions.PerformBatch at
// once: enough to spread a statement's and a commit's cost, few enough
// that a failing run costs little to redo one by one.
const StealBatch = 32

// ErrNoBatch, returned by StealOptions.PerformBatch, says the jobs cannot
// be performed together; nothing was done. The steal performs them, and
// every later job, one by one.
var ErrNoBatch = errors.New("steal: these jobs cannot be performed together")

// ErrBatchOutcomeUnknown, wrapped in PerformBatch's error, says the run
// may have been applied (its COMMIT failed): its jobs fail with that error
// and go back, as a single job whose commit failed does, instead of being
// performed again one by one at once.
var ErrBatchOutcomeUnknown = errors.New("steal: the commit of jobs performed together failed; they may have been applied")

// page performs envs, Concurrency units at once, starting them in order;
// a unit is one job, or a run of jobs offered to PerformBatch. Without
// KeepGoing, no job starts after a job failed (units already running
// finish). It returns the envelopes performed and the failures, in list
// order.
func (d *drainer) page(ctx context.Context, envs []string) (ok []string, failed []*StealError) {
	errs := make([]error, len(envs))
	jobs := make([]*StolenJob, len(envs))
	started := make([]bool, len(envs))
	var stop atomic.Bool
	halt := func() bool { return stop.Load() || ctx.Err() != nil }
	slots := make(chan struct{}, d.s.opts.Concurrency)
	var wg sync.WaitGroup
	size := d.unitSize(len(envs))
	for lo := 0; lo < len(envs); lo += size {
		hi := min(lo+size, len(envs))
		slots <- struct{}{}
		if halt() {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			tried, err := d.batch(ctx, envs[lo:hi], jobs[lo:hi])
			if tried && (err == nil || errors.Is(err, ErrBatchOutcomeUnknown)) {
				for i := lo; i < hi; i++ {
					started[i], errs[i] = true, err
				}
				if err != nil && !d.s.opts.KeepGoing {
					stop.Store(true)
				}
				return
			}
			for i := lo; i < hi; i++ {
				// A unit's first job was cleared to start when the unit
				// was; after a failed run, time has passed.
				if (i > lo || tried) && halt() {
					return
				}
				started[i] = true
				jobs[i], errs[i] = d.one(ctx, envs[i])
				if errs[i] != nil && !d.s.opts.KeepGoing {
					stop.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	for i, env := range envs {
		switch {
		case !started[i]:
		case errs[i] == nil:
			ok = append(ok, env)
		default:
			failed = append(failed, &StealError{Job: jobs[i], Err: errs[i], env: env})
		}
	}
	return ok, failed
}

// batching reports whether runs of jobs are still offered to PerformBatch.
func (s *stealer) batching() bool { return s.opts.PerformBatch != nil && !s.noBatch.Load() }

// unitSize spreads a page over the concurrency: runs of up to StealBatch
// jobs while they can be performed together, else one job at a time (so
// jobs start in order).
func (d *drainer) unitSize(n int) int {
	if !d.s.batching() {
		return 1
	}
	return min(StealBatch, max(1, n/d.s.opts.Concurrency))
}

// batch offers envs to PerformBatch. tried is false when it did not run
// them (fewer than two, a job that does not parse, ErrNoBatch): nothing
// was done. Otherwise err is the run's: nil when all were performed.
func (d *drainer) batch(ctx context.Context, envs []string, out []*StolenJob) (tried bool, err error) {
	if len(envs) < 2 || !d.s.batching() {
		return false, nil
	}
	for i, env := range envs {
		sj := parseEnvelope(env)
		if sj.Err == nil {
			sj.Job, sj.Err = ParseJob(sj.Raw)
		}
		if sj.Err != nil {
			return false, nil
		}
		out[i] = sj
	}
	err = d.s.opts.PerformBatch(ctx, out)
	if errors.Is(err, ErrNoBatch) {
		d.s.noBatch.Store(true)
		return false, nil
	}
	if err != nil && !errors.Is(err, ErrBatchOutcomeUnknown) {
		d.s.log.Debug("jobs not performed together; one by one", zap.Int("jobs", len(envs)), zap.Error(err))
		return true, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done += len(envs)
	if err == nil {
		d.res.Performed += len(envs)
	} else {
		d.failed += len(envs)
	}
	if d.s.opts.Progress != nil {
		d.s.opts.Progress(StealProgress{Source: d.src, Done: d.done, Total: d.total, Failed: d.failed})
	}
	return true, err
}

// one performs one stolen job and reports progress.
func (d *drainer) one(ctx context.Context, env string) (*StolenJob, error) {
	sj := parseEnvelope(env)
	if sj.Err == nil {
		sj.Job, sj.Err = ParseJob(sj.Raw)
	}
	err := sj.Err
	if err == nil {
		err = d.perform(ctx, sj)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done++
	if err == nil {
		d.res.Performed++
	} else {
		d.failed++
	}
	if d.s.opts.Progress != nil {
		d.s.opts.Progress(StealProgress{Source: d.src, Done: d.done, Total: d.total, Failed: d.failed})
	}
	return sj, err
}

// parseEnvelope splits "<key>\n<score>\n<raw>".
func parseEnvelope(env string) *StolenJob {
	key, rest, ok1 := strings.Cut(env, "\n")
	score, raw, ok2 := strings.Cut(rest, "\n")
	sj := &StolenJob{Key: key, Score: score, Raw: []byte(raw)}
	if !ok1 || !ok2 {
		sj.Err = fmt.Errorf("%w: malformed steal envelope", ErrInvalidJob)
	}
	switch key {
	case keySchedule:
		sj.Source = SourceSchedule
	case keyRetry:
		sj.Source = SourceRetry
	case keyDead:
		sj.Source = SourceDead
	default:
		sj.Source = SourceQueue
	}
	return sj
}

func returnOne(ctx context.Context, rdb redis.UniversalClient, private, env string) (bool, error) {
	sj := parseEnvelope(env)
	if sj.Err != nil || sj.Key == "" {
		// Not something a steal wrote; leave it for a human rather than
		// guess where it goes.
		return false, fmt.Errorf("steal: %s holds a malformed entry %.60q", private, env)
	}
	n, err := stealReturnScript.Run(ctx, rdb, []string{private, sj.Key, keyQueues},
		env, sj.Raw, sj.Score, queueName(sj.Key)).Int()
	return n == 1, err
}

// returnAll puts every job of a private list back where it came from.
func returnAll(ctx context.Context, rdb redis.UniversalClient, private string, chunk int) (int, error) {
	n := 0
	for {
		envs, err := rdb.LRange(ctx, private, 0, int64(chunk)-1).Result()
		if err != nil {
			return n, fmt.Errorf("steal: push back: %w", err)
		}
		if len(envs) == 0 {
			return n, nil
		}
		for _, env := range envs {
			ok, err := returnOne(ctx, rdb, private, env)
			if err != nil {
				return n, fmt.Errorf("steal: push back: %w", err)
			}
			if ok {
				n++
			}
		}
	}
}

// restoreHold appends a hold list back to the oldest end of its queue.
func restoreHold(ctx context.Context, rdb redis.UniversalClient, hold, queue string, chunk int) (int, error) {
	n := 0
	for {
		before, err := rdb.LLen(ctx, hold).Result()
		if err != nil {
			return n, fmt.Errorf("steal: restore queue order: %w", err)
		}
		if before == 0 {
			return n, nil
		}
		left, err := restoreHoldScript.Run(ctx, rdb, []string{hold, QueueKey(queue), keyQueues}, chunk, queue).Int64()
		if err != nil {
			return n, fmt.Errorf("steal: restore queue order: %w", err)
		}
		n += int(before - left)
		if left == 0 {
			return n, nil
		}
	}
}

// RecoverSteals puts back the jobs of steals whose process died (their
// liveness key lapsed) and returns how many it put back. Steal calls it
// first; it is safe to run from several processes at once.
func RecoverSteals(ctx context.Context, rdb redis.UniversalClient, log *zap.Logger) (int, error) {
	if log == nil {
		log = zap.NewNop()
	}
	steals, err := rdb.HGetAll(ctx, keySteals).Result()
	if err != nil {
		return 0, fmt.Errorf("steal: list steals: %w", err)
	}
	total := 0
	for id, q := range steals {
		alive, err := rdb.Exists(ctx, stealAliveKey(id)).Result()
		if err != nil {
			return total, fmt.Errorf("steal: %w", err)
		}
		if alive > 0 {
			continue
		}
		n, err := restoreHold(ctx, rdb, stealHoldKey(id), q, 1000)
		total += n
		if err != nil {
			return total, err
		}
		n, err = returnAll(ctx, rdb, stealPrivateKey(id), 1000)
		total += n
		if err != nil {
			return total, err
		}
		rdb.HDel(ctx, keySteals, id)
		log.Info("recovered the jobs of a dead steal", zap.String("steal", id), zap.Int("jobs", n))
	}
	return total, nil
}

// needle is the JSON string literal of s used to prefilter payloads by
// plain substring search, or "" (no prefilter) when s contains anything a
// JSON encoder might escape differently (quotes, backslashes, "/", control
// or non-ASCII characters): a wrong needle would hide matching jobs.
func needle(s string) string {
	if s == "" {
		return ""
	}
	for _, r := range s {
		if r > unicode.MaxASCII || r < 0x20 || r == '"' || r == '\\' || r == '/' || r == '<' || r == '>' || r == '&' {
			return ""
		}
	}
	return `"` + s + `"`
}

// JobCounts are the jobs of one first argument in each place.
type JobCounts struct {
	// Queue sums the queues counted; ByQueue splits it.
	Queue     int            `json:"queue"`
	ByQueue   map[string]int `json:"by_queue,omitempty"`
	Scheduled int            `json:"scheduled"`
	// Held are taken by a `bm steal` that has not run them yet (or whose
	// process died and whose liveness has not lapsed yet).
	Held  int `json:"held"`
	Retry int `json:"retry"`
	Dead  int `json:"dead"`
}

func (c *JobCounts) addQueue(q string) {
	if c.ByQueue == nil {
		c.ByQueue = map[string]int{}
	}
	c.ByQueue[q]++
	c.Queue++
}

// Remaining is what GitLab's remaining counts, queue + scheduled, and the
// jobs a steal holds: none of them has run yet.
func (c JobCounts) Remaining() int { return c.Queue + c.Scheduled + c.Held }

// CountByArg0 counts the jobs of Sidekiq class in queue, the scheduled set
// and (with retryDead) the retry and dead sets, grouped by their first
// argument when it is a string. It reads in pages and never blocks Redis.
func CountByArg0(ctx context.Context, rdb redis.UniversalClient, class, queue string, retryDead bool) (map[string]*JobCounts, error) {
	return CountByArg0Queues(ctx, rdb, class, []string{queue}, retryDead)
}

// CountByArg0Queues is CountByArg0 over several queues; the scheduled,
// retry and dead sets are counted once.
func CountByArg0Queues(ctx context.Context, rdb redis.UniversalClient, class string, queues []string, retryDead bool) (map[string]*JobCounts, error) {
	out := map[string]*JobCounts{}
	nW := []byte(needle(class))
	add := func(raw string, inc func(*JobCounts)) {
		if len(nW) > 0 && !bytes.Contains([]byte(raw), nW) {
			return
		}
		cls, a0, ok := classAndArg0(raw)
		if !ok || cls != class || a0 == "" {
			return
		}
		c := out[a0]
		if c == nil {
			c = &JobCounts{}
			out[a0] = c
		}
		inc(c)
	}
	const page = 1000
	scan := func(key string, isList bool, inc func(*JobCounts)) error {
		for start := int64(0); ; start += page {
			var xs []string
			var err error
			if isList {
				xs, err = rdb.LRange(ctx, key, start, start+page-1).Result()
			} else {
				xs, err = rdb.ZRange(ctx, key, start, start+page-1).Result()
			}
			if err != nil {
				return fmt.Errorf("count %s: %w", key, err)
			}
			for _, x := range xs {
				add(x, inc)
			}
			if len(xs) < page {
				return nil
			}
		}
	}
	for _, q := range queues {
		if err := scan(QueueKey(q), true, func(c *JobCounts) { c.addQueue(q) }); err != nil {
			return nil, err
		}
	}
	if err := scan(keySchedule, false, func(c *JobCounts) { c.Scheduled++ }); err != nil {
		return nil, err
	}
	held, err := heldBySteals(ctx, rdb, "")
	if err != nil {
		return nil, err
	}
	for _, raw := range held {
		add(raw, func(c *JobCounts) { c.Held++ })
	}
	if retryDead {
		if err := scan(keyRetry, false, func(c *JobCounts) { c.Retry++ }); err != nil {
			return nil, err
		}
		if err := scan(keyDead, false, func(c *JobCounts) { c.Dead++ }); err != nil {
			return nil, err
		}
	}
	return out, nil
}
