package sidekiq

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Ack removes finished jobs from the private list in one round trip.
func (b *Broker) Ack(ctx context.Context, ds ...*Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, d := range ds {
			p.LRem(ctx, inflightKey(b.identity, d.Queue), -1, d.Raw)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// Requeue pushes unfinished jobs back to the right end of their queue (the
// next to be fetched), exactly as they were read, as Sidekiq does on a hard
// shutdown. Returns how many were pushed back.
func (b *Broker) Requeue(ctx context.Context, ds ...*Delivery) (int, error) {
	n := 0
	for _, d := range ds {
		ok, err := b.settle(ctx, inflightKey(b.identity, d.Queue), QueueKey(d.Queue), d.Raw, d.Raw, "rpush", d.Queue)
		if err != nil {
			return n, fmt.Errorf("requeue: %w", err)
		}
		if ok {
			n++
		}
	}
	return n, nil
}

func (b *Broker) settle(ctx context.Context, from, to string, orig, next []byte, op, arg string) (bool, error) {
	return b.settleFenced(ctx, "", from, to, orig, next, op, arg)
}

// settleFenced is settle on the private list of process owner ("": ours),
// done only while owner is still missing. It returns errOwnerBack if owner
// refreshed its liveness since recovery found it dead.
func (b *Broker) settleFenced(ctx context.Context, owner, from, to string, orig, next []byte, op, arg string) (bool, error) {
	cutoff := formatFloatTime(epoch(b.opts.Now().Add(-b.opts.DeadTimeout)))
	keys := []string{from, to, keyQueues}
	args := []any{orig, next, op, arg, cutoff, b.opts.DeadMaxJobs}
	if owner != "" {
		keys = append(keys, aliveKey(owner), keyMissingSince)
		args = append(args, owner)
	}
	n, err := settleScript.Run(ctx, b.rdb, keys, args...).Int()
	if err == nil && n < 0 {
		return false, errOwnerBack
	}
	return n == 1, err
}

// Failure describes why a job failed, in the shape Sidekiq records it.
type Failure struct {
	Class     string   // error_class, e.g. "NameError" or a Go type name
	Message   string   // error_message
	Backtrace []string // lines, newest call first; stored only if the job asks for it
	// Kill treats the job as exhausted now (Sidekiq's :kill): it goes to
	// the dead set, unless it has retry:false or dead:false.
	Kill bool
}

// FailureOutcome says where a failed job went.
type FailureOutcome int

const (
	OutcomeRetry   FailureOutcome = iota // scheduled in the retry set
	OutcomeDead                          // retries exhausted: in the dead set
	OutcomeDropped                       // retry:false or dead:false: gone
	OutcomeGone                          // no longer ours (recovered elsewhere): nothing written
)

func (o FailureOutcome) String() string {
	return [...]string{"retry", "dead", "dropped", "gone"}[o]
}

// Fail records a failed job following Sidekiq's retry algorithm
// (sidekiq-protocol.md §3): error fields, retry_count, failed_at/retried_at,
// backoff count⁴+15+rand(10)·(count+1), retry_queue, retry:N/false, dead:false,
// and the dead set with both trims when retries are exhausted.
func (b *Broker) Fail(ctx context.Context, d *Delivery, f Failure) (FailureOutcome, time.Time, error) {
	from := inflightKey(b.identity, d.Queue)
	if d.Job == nil {
		ok, err := b.settle(ctx, from, keyDead, d.Raw, b.buryable(d.Raw, d.Queue), "dead", formatFloatTime(epoch(b.opts.Now())))
		return outcome(ok, OutcomeDead), time.Time{}, err
	}
	// Rebuild from the original bytes, as Sidekiq does, so that changes a
	// middleware or the worker made to d.Job are not recorded.
	orig, err := ParseJob(d.Raw)
	if err != nil {
		orig = d.Job
	}
	entry, out, at := b.FailureEntry(orig, d.Queue, f)
	var ok bool
	switch out {
	case OutcomeRetry:
		ok, err = b.settle(ctx, from, keyRetry, d.Raw, entry, "zadd", formatFloatTime(epoch(at)))
	case OutcomeDead:
		ok, err = b.settle(ctx, from, keyDead, d.Raw, entry, "dead", formatFloatTime(epoch(at)))
	default:
		ok, err = b.settle(ctx, from, keyDead, d.Raw, nil, "drop", "")
	}
	if err != nil {
		return out, at, fmt.Errorf("record failure of %s: %w", d.Job.JID(), err)
	}
	return outcome(ok, out), at, nil
}

func outcome(ok bool, o FailureOutcome) FailureOutcome {
	if !ok {
		return OutcomeGone
	}
	return o
}

// FailureEntry builds the retry or dead entry for job j and says where it
// goes and when (retry time or time of death). Exposed for tools that fail
// jobs outside a worker (e.g. a steal whose perform raised).
func (b *Broker) FailureEntry(j *Job, queue string, f Failure) ([]byte, FailureOutcome, time.Time) {
	now := b.opts.Now()
	e := j.Clone()
	if queue != "" {
		// Sidekiq retries on the queue the job was fetched from, whatever
		// its payload says (or on retry_queue, below).
		e.SetString("queue", queue)
	}
	pol := j.Retry(RetryPolicy{Enabled: true, Max: -1})
	if !pol.Enabled {
		return nil, OutcomeDropped, now
	}
	maxRetries := pol.Max
	if maxRetries < 0 {
		maxRetries = b.maxRetries
	}
	if rq := j.str("retry_queue"); rq != "" {
		e.SetString("queue", rq)
	}
	e.SetString("error_message", truncateMessage(f.Message))
	cls := f.Class
	if cls == "" {
		cls = "StandardError"
	}
	e.SetString("error_class", cls)
	count := int64(0)
	if prev, ok := j.Int("retry_count"); ok {
		count = prev + 1
		e.SetTime("retried_at", epoch(now))
	} else {
		e.SetTime("failed_at", epoch(now))
	}
	e.SetInt("retry_count", count)
	if bt := backtraceLines(j, f.Backtrace); bt != nil {
		e.SetString("error_backtrace", encodeBacktrace(bt))
	}
	exhausted := f.Kill || count >= int64(maxRetries)
	if !exhausted {
		if rf, ok := j.Int("retry_for"); ok {
			// failed_at is read by its JSON type: Sidekiq 8 writes ms.
			if fa, ok := j.Time("failed_at"); ok && epoch(fa)+float64(rf) < epoch(now) {
				exhausted = true
			}
		}
	}
	if exhausted {
		if v := j.Get("dead"); string(v) == "false" {
			return nil, OutcomeDropped, now
		}
		return validUTF8(e.Encode()), OutcomeDead, now
	}
	return validUTF8(e.Encode()), OutcomeRetry, now.Add(RetryDelay(int(count), b.opts.Rand))
}

// RetryDelay is Sidekiq's default backoff for the count-th retry:
// count⁴ + 15 seconds plus rand(10)·(count+1) seconds of jitter.
func RetryDelay(count int, randN func(int) int) time.Duration {
	c := float64(count)
	secs := math.Pow(c, 4) + 15 + float64(randN(10)*(count+1))
	return time.Duration(secs * float64(time.Second))
}

func truncateMessage(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if utf8.RuneCountInString(s) > 10_000 {
		r := []rune(s)
		s = string(r[:10_000])
	}
	return s
}

// backtraceLines applies the job's "backtrace" option: true = all lines,
// N = the first N; anything else = none.
func backtraceLines(j *Job, lines []string) []string {
	v := strings.TrimSpace(string(j.Get("backtrace")))
	switch {
	case v == "true":
		if lines == nil {
			return []string{}
		}
		return lines
	case v == "" || v == "false" || v == "null":
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return nil
	}
	if len(lines) > n {
		lines = lines[:n]
	}
	if lines == nil {
		return []string{}
	}
	return lines
}

// encodeBacktrace is strict base64 of zlib-deflated JSON, which Sidekiq 6.4
// and 7.x both read.
func encodeBacktrace(lines []string) string {
	js, _ := json.Marshal(lines)
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	_, _ = w.Write(js)
	_ = w.Close()
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// DecodeBacktrace reverses encodeBacktrace (accepting Ruby's line-wrapped base64).
func DecodeBacktrace(s string) ([]string, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(s, "\n", ""))
	if err != nil {
		return nil, err
	}
	r, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var lines []string
	err = json.NewDecoder(r).Decode(&lines)
	return lines, err
}

// buryableObject is a JSON object that is no job (no class, args not an
// array) as it was, plus the error fields the Morgue shows as its reason
// and a jid, without which the Morgue cannot open or retry the entry.
func (b *Broker) buryableObject(raw []byte, now float64) []byte {
	j, err := scanJob(raw)
	if err != nil {
		return raw
	}
	why := j.validate()
	if why == nil || j.Get("error_class") != nil {
		return raw // a job after all, or one that already says why
	}
	if j.JID() == "" {
		j.SetString("jid", NewJID())
	}
	j.SetTime("failed_at", now)
	j.SetString("error_class", "Ferry::InvalidPayload")
	j.SetString("error_message", strings.TrimPrefix(why.Error(), ErrInvalidJob.Error()+": "))
	return j.Encode()
}

// Kill adds a payload straight to the dead set (with both trims), e.g. a
// job that is not valid JSON or a poison pill.
func (b *Broker) Kill(ctx context.Context, payload []byte) error {
	cutoff := formatFloatTime(epoch(b.opts.Now().Add(-b.opts.DeadTimeout)))
	return deadAddScript.Run(ctx, b.rdb, []string{keyDead},
		formatFloatTime(epoch(b.opts.Now())), b.buryable(payload, ""), cutoff, b.opts.DeadMaxJobs).Err()
}

// validUTF8 replaces invalid UTF-8 in a JSON entry (it can only be inside
// strings) with U+FFFD: Sidekiq 6.4's Web UI raises on such a class name,
// and one entry breaks the Retries or Morgue page for every job.
func validUTF8(entry []byte) []byte {
	if utf8.Valid(entry) {
		return entry
	}
	return bytes.ToValidUTF8(entry, []byte("\uFFFD"))
}

// buryable is how a payload that is no usable job goes into the dead set,
// its invalid UTF-8 replaced (validUTF8). Text that is not JSON is kept
// otherwise as it is, as Sidekiq does (its Web UI shows such an entry
// empty), but valid JSON that is not an object (null, an array) would make
// the UI's parse of the whole page fail: it is wrapped in a job of class
// Ferry::InvalidPayload, the payload as its argument, that the Morgue
// shows.
func (b *Broker) buryable(raw []byte, queue string) []byte {
	raw = validUTF8(raw)
	now := epoch(b.opts.Now())
	if !json.Valid(raw) {
		return raw
	}
	if raw[skipSpace(raw, 0)] == '{' {
		return b.buryableObject(raw, now)
	}
	e := &Job{}
	e.SetString("class", "Ferry::InvalidPayload")
	args, _ := json.Marshal([]string{string(raw)})
	e.Set("args", args)
	if queue != "" {
		e.SetString("queue", queue)
	}
	e.SetString("jid", NewJID())
	e.SetTime("created_at", now)
	e.SetTime("failed_at", now)
	e.SetString("error_class", "Ferry::InvalidPayload")
	e.SetString("error_message", "the payload is not a JSON object (its text is the argument)")
	e.Set("retry", json.RawMessage("false"))
	return e.Encode()
}
