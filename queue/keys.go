package queue

// All Redis key names ferry reads or writes live in this file, so that the
// Sidekiq wire layout can be checked in one place (sidekiq-protocol.md §2.1).

const (
	keyQueues     = "queues"    // SET of queue names
	keySchedule   = "schedule"  // ZSET, score = run time
	keyRetry      = "retry"     // ZSET, score = next retry time
	keyDead       = "dead"      // ZSET, score = time of death
	keyProcesses  = "processes" // SET of process identities
	keyStatProc   = "stat:processed"
	keyStatFailed = "stat:failed"

	// ferry's own keys. They are prefixed so that Sidekiq tools never
	// mistake them for queues or processes.
	keyFetchers     = "ferry:fetchers"      // HASH identity -> JSON list of queues it fetches from
	keyRecoveryLock = "ferry:recovery-lock" // cluster lock for orphan recovery
)

// QueueKey is the Redis list holding the jobs of queue name.
func QueueKey(name string) string { return "queue:" + name }

// queueName strips the "queue:" prefix.
func queueName(key string) string {
	if len(key) > 6 && key[:6] == "queue:" {
		return key[6:]
	}
	return key
}

// inflightKey is the private list holding the jobs that process identity
// has taken from queue name and not yet acknowledged.
func inflightKey(identity, name string) string { return "ferry:inflight|" + identity + "|" + name }

// stagingKey is the private list the poller moves due scheduled and retry
// entries into before pushing them to their queue, so a crash between the
// two steps loses nothing.
func stagingKey(identity string) string { return "ferry:staging|" + identity }

// aliveKey is a short-lived liveness key, refreshed more often than
// Sidekiq's 60 s process hash, so orphaned work is recovered promptly.
func aliveKey(identity string) string { return "ferry:alive|" + identity }

func statDailyKey(base, date string) string { return base + ":" + date }

// Process heartbeat keys (sidekiq-protocol.md §2.7). 6.4.1 reads ":workers",
// 6.4.2+ read ":work"; ferry writes both.
func workersKey(identity string) string { return identity + ":workers" }
func workKey(identity string) string    { return identity + ":work" }
func signalsKey(identity string) string { return identity + "-signals" }
