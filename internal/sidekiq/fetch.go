package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// WeightedQueue is a queue name with a Sidekiq weight (0 = unweighted).
type WeightedQueue struct {
	Name   string
	Weight int
}

// ParseQueues reads Sidekiq's "a,b" or "a:3,b:1" queue syntax.
func ParseQueues(spec string) ([]WeightedQueue, error) {
	var out []WeightedQueue
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, hasW := strings.Cut(part, ":")
		q := WeightedQueue{Name: strings.TrimSpace(name)}
		if hasW {
			n, err := strconv.Atoi(strings.TrimSpace(w))
			if err != nil || n < 0 {
				return nil, fmt.Errorf("queue %q: weight must be a non-negative integer, got %q", q.Name, w)
			}
			q.Weight = n
		}
		if q.Name == "" {
			return nil, fmt.Errorf("queue list %q has an empty queue name", spec)
		}
		if seen[q.Name] {
			return nil, fmt.Errorf("queue %q is listed twice", q.Name)
		}
		seen[q.Name] = true
		out = append(out, q)
	}
	if len(out) == 0 {
		return nil, errors.New("queue list is empty")
	}
	return out, nil
}

// Delivery is one job taken from a queue into this process's private list.
// It stays there until Ack, Retry/Kill or Requeue settles it.
type Delivery struct {
	Queue string // queue name, without "queue:"
	Raw   []byte // exact bytes, used to remove it from the private list
	Job   *Job   // nil when Raw is not a valid job (see Err), or not parsed yet
	Err   error  // parse error
	At    time.Time
}

// Parse parses Raw into Job (or Err) if that has not happened yet, for
// deliveries of a Fetcher with DeferParse set.
func (d *Delivery) Parse() {
	if d.Job == nil && d.Err == nil {
		d.Job, d.Err = ParseJob(d.Raw)
	}
}

// Fetcher takes jobs for one process from its queues.
type Fetcher struct {
	// DeferParse leaves parsing to the caller (Delivery.Parse), so that a
	// runtime can parse on its job goroutines instead of in its fetch loop.
	DeferParse bool

	b      *Broker
	queues []WeightedQueue
	strict bool
	rnd    *rand.Rand
	keys   []string // scratch
	args   []any    // scratch
}

// NewFetcher builds a fetcher. Queue order is strict unless a weight is
// set, in which case it is Sidekiq's weighted shuffle on every fetch.
func (b *Broker) NewFetcher(queues []WeightedQueue) *Fetcher {
	strict := true
	for _, q := range queues {
		if q.Weight > 0 {
			strict = false
		}
	}
	return &Fetcher{b: b, queues: queues, strict: strict, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// Queues returns the configured queues.
func (f *Fetcher) Queues() []WeightedQueue { return f.queues }

// order returns queue names in fetch order: configured order when strict;
// otherwise each queue repeated max(weight,1) times, shuffled and
// de-duplicated (sidekiq-protocol.md §2.3).
func (f *Fetcher) order() []string {
	names := make([]string, 0, len(f.queues))
	if f.strict {
		for _, q := range f.queues {
			names = append(names, q.Name)
		}
		return names
	}
	var bag []string
	for _, q := range f.queues {
		for range max(q.Weight, 1) {
			bag = append(bag, q.Name)
		}
	}
	f.rnd.Shuffle(len(bag), func(i, j int) { bag[i], bag[j] = bag[j], bag[i] })
	seen := make(map[string]bool, len(f.queues))
	for _, n := range bag {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	return names
}

// TryFetch takes up to max jobs without blocking.
func (f *Fetcher) TryFetch(ctx context.Context, max int) ([]*Delivery, error) {
	return f.tryFetch(ctx, nil, max)
}

// tryFetch acknowledges acks (deliveries of this fetcher) and takes up to
// max jobs, in one round trip.
func (f *Fetcher) tryFetch(ctx context.Context, acks []*Delivery, max int) ([]*Delivery, error) {
	order := f.order()
	id := f.b.identity
	keys := append(f.keys[:0], aliveKey(id), keyMissingSince)
	for _, n := range order {
		keys = append(keys, QueueKey(n), inflightKey(id, n))
	}
	f.keys = keys
	now := f.b.opts.Now()
	const fixedArgs = 5
	args := append(f.args[:0], max, 0, f.b.opts.AliveTTL.Milliseconds(), id, formatFloatTime(epoch(now)))
	var other []*Delivery
	for _, d := range acks {
		i := slices.Index(order, d.Queue)
		if i < 0 {
			other = append(other, d)
			continue
		}
		args = append(args, 2*i+4, d.Raw) // KEYS index of its in-flight list
	}
	args[1] = (len(args) - fixedArgs) / 2
	f.args = args
	if len(other) > 0 {
		if err := f.b.Ack(ctx, other...); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	res, err := fetchScript.Run(ctx, f.b.rdb, keys, args...).Slice()
	clear(f.args)
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	// The script ran, so it refreshed our alive key (its first step).
	f.b.noteAliveRefresh(start)
	out := make([]*Delivery, 0, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		qi, _ := res[i].(int64)
		raw, _ := res[i+1].(string)
		if qi < 1 || int(qi) > len(order) {
			continue
		}
		out = append(out, newDelivery(order[qi-1], []byte(raw), now, !f.DeferParse))
	}
	return out, nil
}

// Fetch takes up to max jobs, blocking up to wait for the first one when
// all queues are empty. It returns an empty slice after wait with no job.
// The wait is a BLMOVE (woken at once by a push) on the queue first in
// this fetch's order; with several queues it blocks one second at a time
// and checks all queues in between, so no queue waits long.
//
// Every fetch refreshes this process's alive key first (a BLMOVE follows
// a fetch script that did, so a job it moves lands in a private list
// whose owner was refreshed at most wait earlier); a fetch that fails has
// not refreshed it ([Broker.LastAliveRefresh]).
func (f *Fetcher) Fetch(ctx context.Context, max int, wait time.Duration) ([]*Delivery, error) {
	return f.FetchAndAck(ctx, nil, max, wait)
}

// FetchAndAck is Fetch that first acknowledges acks (finished deliveries
// of this fetcher) in the same round trip as the fetch. If it returns an
// error, the acks may or may not have been written.
func (f *Fetcher) FetchAndAck(ctx context.Context, acks []*Delivery, max int, wait time.Duration) ([]*Delivery, error) {
	ds, err := f.tryFetch(ctx, acks, max)
	if err != nil || len(ds) > 0 || wait <= 0 {
		return ds, err
	}
	// Redis takes BLMOVE timeouts in whole seconds here (go-redis
	// truncates below 1 s), so block in 1 s steps.
	deadline := time.Now().Add(wait)
	for time.Until(deadline) >= time.Second {
		first := f.order()[0]
		block := time.Second
		if len(f.queues) == 1 {
			block = time.Until(deadline).Truncate(time.Second)
		}
		raw, err := f.b.rdb.BLMove(ctx, QueueKey(first), inflightKey(f.b.identity, first), "RIGHT", "LEFT", block).Result()
		switch {
		case err == nil:
			d := newDelivery(first, []byte(raw), f.b.opts.Now(), !f.DeferParse)
			if max > 1 {
				if more, err := f.TryFetch(ctx, max-1); err == nil {
					return append([]*Delivery{d}, more...), nil
				}
			}
			return []*Delivery{d}, nil
		case errors.Is(err, redis.Nil):
		default:
			return nil, fmt.Errorf("fetch: %w", err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(f.queues) > 1 {
			if ds, err := f.TryFetch(ctx, max); err != nil || len(ds) > 0 {
				return ds, err
			}
		}
	}
	return nil, nil
}

// newDelivery wraps a job taken at now from queue q; parse is false for a
// Fetcher with DeferParse.
func newDelivery(q string, raw []byte, now time.Time, parse bool) *Delivery {
	d := &Delivery{Queue: q, Raw: raw, At: now}
	if parse {
		d.Parse()
	}
	return d
}

// InFlight lists the jobs this process holds in its private list for queue
// name, oldest first. A runtime uses it to find entries it does not know
// about (e.g. taken by a fetch whose reply was lost) and push them back.
func (b *Broker) InFlight(ctx context.Context, name string) ([]*Delivery, error) {
	items, err := b.rdb.LRange(ctx, inflightKey(b.identity, name), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("in-flight %s: %w", name, err)
	}
	now := b.opts.Now()
	out := make([]*Delivery, 0, len(items))
	for i := len(items) - 1; i >= 0; i-- { // the list grows at the left
		out = append(out, newDelivery(name, []byte(items[i]), now, true))
	}
	return out, nil
}
