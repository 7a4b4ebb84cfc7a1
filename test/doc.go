// Package test holds ferry's cross-language interoperability and chaos
// tests. They run the real `ferry` binary (built once in TestMain from
// ./cmd/ferry) as subprocesses against real Redis servers, next to Ruby
// Sidekiq 6.4 (Debian's ruby-sidekiq) clients, servers, API and Web UI:
//
//   - interop_test.go: a Ruby Sidekiq::Client pushes jobs (single, bulk,
//     scheduled, unknown class) that `ferry worker` runs; ferry's retry
//     entries are read and retried through Sidekiq's Ruby API; jobs from
//     `ferry enqueue` (immediate and --in) run on a Ruby `sidekiq` server
//     with their args (integers beyond 2^64, nested hashes) intact;
//     Sidekiq::ProcessSet, Queue, RetrySet and DeadSet see ferry's process
//     and entries, and quiet!/stop! reach it through the signals list; the
//     Sidekiq Web UI pages (/, /busy, /retries, /morgue, /queues,
//     /scheduled and the entry pages) render ferry's data with HTTP 200.
//   - chaos_test.go: a worker killed with SIGKILL under load loses no job
//     (another worker recovers its private list); TERM under load exits 0
//     and leaves nothing behind; a Redis server killed and restarted under
//     load is survived, with every job still run.
//   - liveness_test.go: a worker cut off from Redis by a network that stops
//     forwarding, Redis at maxmemory with noeviction, and Redis restarted
//     empty: with a test job class that records every execution outside
//     Redis (test/testdata/liveworker), no job runs on two workers at once
//     and none is lost.
//
// Every test gets its own Redis database (internal/testenv), and the
// chaos test for Redis restarts starts its own redis-server, so the
// package can run in parallel with others on the shared servers.
//
// Run them with the test services:
//
//	eval "$(scripts/services start)"
//	go test -race -count=1 ./test/
//
// Without REDIS_URL the tests skip. The Ruby tests skip (saying so) when
// `ruby -e 'require "sidekiq"'` fails; install Debian's ruby-sidekiq to run
// them (CI does). redis-server must be on PATH for the Redis-restart test.
// The SIGKILL and network-cut tests wait for a worker's 20 s liveness key
// to expire and then for the 10 s recovery grace, as recovery does in
// production.
package test
