package sidekiq

import (
	"strconv"
	"time"
)

// All Redis key names ferry reads or writes live in this file, so that the
// Sidekiq wire layout can be checked in one place (sidekiq-protocol.md §2.1).

const (
	keyQueues    = "queues"    // SET of queue names
	keySchedule  = "schedule"  // ZSET, score = run time
	keyRetry     = "retry"     // ZSET, score = next retry time
	keyDead      = "dead"      // ZSET, score = time of death
	keyProcesses = "processes" // SET of process identities
	// keyProcessCleanup throttles the pruning of processes to once per
	// processCleanupEvery across every Sidekiq and ferry process (7.x's
	// ProcessSet.cleanup).
	keyProcessCleanup = "process_cleanup"
	keyStatProc       = "stat:processed"
	keyStatFailed     = "stat:failed"

	// ferry's own keys. They are prefixed so that Sidekiq tools never
	// mistake them for queues or processes.
	keyFetchers      = "ferry:fetchers"       // HASH identity -> JSON list of queues it fetches from
	keyRecoveryLock  = "ferry:recovery-lock"  // cluster lock for orphan recovery
	keyStatRecovered = "ferry:stat:recovered" // jobs pushed back from dead processes, ever
	// keyMissingSince is a HASH identity -> Redis server time (ms) at which
	// a recovery pass first found that process's alive key missing. Every
	// refresh of the alive key deletes the field in the same atomic step,
	// so a field present means "missing ever since"; recovery waits for a
	// grace period from it (recovery.go).
	keyMissingSince = "ferry:missing-since"
	patternInflight = "ferry:inflight|*"
	// keyPushedPrefix + the payload's SHA-1 marks a push made with
	// WaitForReplicas, for pushedTTL: a push made again finds it on a
	// master that kept the first one, and does not push a job that a worker
	// may already have taken.
	keyPushedPrefix = "ferry:pushed:"
)

// processCleanupEvery is Sidekiq's throttle of process pruning.
const processCleanupEvery = time.Minute

// pushedTTL outlives any failover a push waits through.
const pushedTTL = 10 * time.Minute

// Sidekiq's shared key names, exported for readers such as the admin UI.
const (
	KeyQueues        = keyQueues
	KeySchedule      = keySchedule
	KeyRetry         = keyRetry
	KeyDead          = keyDead
	KeyProcesses     = keyProcesses
	KeyStatProcessed = keyStatProc
	KeyStatFailed    = keyStatFailed
)

// WorkKey and WorkersKey are a process's busy-job hashes (6.4.2+ / 6.4.1).
func WorkKey(identity string) string    { return workKey(identity) }
func WorkersKey(identity string) string { return workersKey(identity) }

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

// Legacy background migrations (internal/legacy, `ferry bm ...`).

// ExclusiveLeaseKey is the Redis key of GitLab's Gitlab::ExclusiveLease
// ("gitlab:exclusive_lease:<key>"). ferry uses the same key for the
// per-migration-class lease of BackgroundMigrationWorker, so a Ruby GitLab
// worker and ferry sharing one Redis honour each other's lease.
func ExclusiveLeaseKey(key string) string { return "gitlab:exclusive_lease:" + key }

// BMPausedKey holds the switch set by `ferry bm pause` (GitLab's ops flag
// execute_background_migrations, inverted). Present = paused.
const BMPausedKey = "ferry:bm:paused"

// keySteals is a HASH steal id -> source queue name of every running
// `ferry bm steal`, so the jobs of a steal whose process died can be found
// and pushed back.
const keySteals = "ferry:steals"

// stealPrivateKey is the private list a steal moves matching jobs into
// (as envelopes naming their source, see steal.go) until they are performed.
func stealPrivateKey(id string) string { return "ferry:steal|" + id }

// stealHoldKey is where a steal keeps the non-matching jobs it popped from
// a queue while it partitions the rest, before putting them back in order.
func stealHoldKey(id string) string { return "ferry:steal-hold|" + id }

// stealAliveKey is refreshed while a steal runs; once it lapses, any
// process may push that steal's jobs back.
func stealAliveKey(id string) string { return "ferry:steal-alive|" + id }

// Execution metrics keys of Sidekiq's Metrics page, all in UTC, unpadded
// where Sidekiq's strftime is ("%-H"). Each version reads only its own:
//   - 7.x (7.2.4 lib/sidekiq/metrics/tracking.rb, shared.rb, query.rb): a
//     HASH per minute "j|%Y%m%d|%-H:%-M" and a BITFIELD histogram per class
//     and minute "<class>-%d-%H:%-M";
//   - 8.x (8.0 lib/sidekiq/metrics/tracking.rb, shared.rb, query.rb): a HASH
//     per minute "j|%y%m%d|%-H:%M", one per ten minutes (the same with the
//     last digit dropped: "j|250214|8:4" for 08:43) and a histogram
//     "h|<class>-%-d-%-H:%-M".
//
// The two "j|" families cannot collide: their dates have 8 and 6 digits.
func metricsMinuteKey7(t time.Time) string {
	t = t.UTC()
	return "j|" + t.Format("20060102") + "|" + strconv.Itoa(t.Hour()) + ":" + strconv.Itoa(t.Minute())
}

func metricsMinuteKey8(t time.Time) string {
	t = t.UTC()
	return "j|" + t.Format("060102") + "|" + strconv.Itoa(t.Hour()) + ":" + t.Format("04")
}

func metricsTenMinuteKey8(t time.Time) string {
	k := metricsMinuteKey8(t)
	return k[:len(k)-1]
}

func histogramKey7(class string, t time.Time) string {
	t = t.UTC()
	return class + "-" + t.Format("02-15") + ":" + strconv.Itoa(t.Minute())
}

func histogramKey8(class string, t time.Time) string {
	t = t.UTC()
	return "h|" + class + "-" + strconv.Itoa(t.Day()) + "-" + strconv.Itoa(t.Hour()) + ":" + strconv.Itoa(t.Minute())
}

// metricsFields are a class's fields in the "j|" hashes: executions
// (failures included), failures, and milliseconds of the successful ones.
func metricsFields(class string) (processed, failed, ms string) {
	return class + "|p", class + "|f", class + "|ms"
}

// bmRunningKey is a ZSET of the legacy migration jobs of one class running
// now, member = holder token, score = Redis time (ms) at which the holder's
// slot lapses unless refreshed; bmRunningAllKey is the same across classes
// (member = "<class>\n<token>"), for the cluster-wide limit. A holder that
// dies stops refreshing, so its slot frees itself.
func bmRunningKey(class string) string { return "ferry:bm:running|" + class }

const bmRunningAllKey = "ferry:bm:running"

// BMThrottledKey holds why legacy migrations were last held back (database
// health), with a short TTL, so `ferry bm remaining` can show it.
const BMThrottledKey = "ferry:bm:throttled"
