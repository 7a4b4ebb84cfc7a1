// Package sidekiq speaks Sidekiq's Redis protocol: it reads and writes the
// same keys and payloads as Ruby Sidekiq 6.4 and 7.x, so Ruby clients,
// Ruby servers and the Sidekiq Web UI interoperate with ferry, and adds
// reliable fetch so that no job is lost when a worker process dies.
//
// # Payloads
//
// A [Job] is a Sidekiq payload kept as its exact bytes plus its keys in
// order. [ParseJob] rejects anything that is not an object with a "class"
// string and an "args" array ([ErrInvalidJob]); re-encoding with
// [Job.Encode] keeps unknown keys (cattr, locale, bid, ...), key order,
// integers of any size and unescaped "<", ">" and "&", so retry and dead
// entries written by ferry look like Ruby's.
//
// Timestamps are read by their JSON type, as Sidekiq 8 reads them
// ([Job.Time], [ParseTimestamp]): an integer is epoch milliseconds (8.x),
// a number with a fraction epoch seconds (6.4, 7.x). ferry writes float
// seconds with a fraction, which every version reads.
//
// # Pushing jobs
//
// A [Client] enqueues jobs the way Sidekiq's client does: SADD queues and
// LPUSH queue:<name> in one pipeline, or ZADD schedule for a future
// [PushOptions].At, with a fresh 24-hex jid and float-second timestamps:
//
//	c := sidekiq.NewClient(rdb)
//	jid, err := c.Push(ctx, "HardWorker", json.RawMessage(`[1,"two"]`), sidekiq.PushOptions{Queue: "go"})
//
// [Client.PushBulk] pushes many jobs of one class in one round trip.
//
// # Reliable fetch
//
// A [Broker] is one worker process's side of the protocol. Its [Fetcher]
// moves jobs atomically from queue:<name> into a private list
// "ferry:inflight|<identity>|<name>" (a Lua script, or BLMOVE when the
// queues are empty), in strict or Sidekiq's weighted random queue order.
// A [Delivery] stays in the private list until it is settled:
//
//   - [Broker.Ack] removes it (LREM of the exact bytes) after success;
//   - [Broker.Fail] applies Sidekiq's retry algorithm ([RetryDelay], retry:N,
//     retry:false, retry_queue, retry_for, dead:false) and writes a retry or
//     dead entry ([Failure]), atomically with the removal;
//   - [Broker.Requeue] pushes it back unchanged to the right end of its
//     queue, as Sidekiq does on a hard shutdown.
//
// # Heartbeat, poller and recovery
//
// [Broker.Heartbeat] writes the process hash, the ":workers" and ":work"
// hashes the Busy page reads, the stat counters, and returns the signals
// (TSTP, TERM, TTIN) the Web UI queued. [Broker.EnqueueDue] moves due
// retry and scheduled entries to their queues through a staging list, on
// the interval [PollInterval] computes. [Broker.FlushMetrics] writes what
// an [ExecMetrics] counted per job class to the keys the Metrics pages of
// Sidekiq 7.x and 8.x read, with their TTLs. Heartbeats and fetches both
// refresh a process's alive key "ferry:alive|<identity>" (AliveTTL, 20 s);
// [Broker.LastAliveRefresh] tells a runtime how long it may still count on
// owning its jobs. [Broker.RecoverOrphans], run periodically under a
// cluster lock, pushes back the private lists of processes whose alive key
// has been missing for RecoveryGrace (10 s) without a break, and sends a
// job rescued more than MaxRecoveries (3) times within RecoveryWindow
// (72 h) to the dead set as a poison pill, as Sidekiq Pro does; the payload
// keeps the count in "ferry_recovered" and the rescue times in
// "ferry_recovered_at".
//
// The worker package builds a complete process runtime on top of this.
package sidekiq
