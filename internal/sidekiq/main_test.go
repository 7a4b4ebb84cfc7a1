package sidekiq

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixedNow is the injected clock of most tests: a time with a fraction.
var fixedNow = time.Unix(1_795_272_961, 997_892_000)

type testBundle struct {
	rdb    *redis.Client
	broker *Broker
	ctx    context.Context
}

// setup gives a test a broker on a fresh Redis database with a fixed clock
// and rand(n) = 0, unless opts set their own.
func setup(t *testing.T, opts BrokerOptions) *testBundle {
	t.Helper()
	rdb := testenv.Redis(t)
	if opts.Now == nil {
		opts.Now = func() time.Time { return fixedNow }
	}
	if opts.Rand == nil {
		opts.Rand = func(int) int { return 0 }
	}
	if opts.Identity == "" {
		opts.Identity = "host:1:aaaaaaaaaaaa"
	}
	b, err := NewBroker(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{rdb: rdb, broker: b, ctx: testenv.Context(t)}
}

func mustParse(t testing.TB, s string) *Job {
	t.Helper()
	j, err := ParseJob([]byte(s))
	if err != nil {
		t.Fatalf("ParseJob(%s): %v", s, err)
	}
	return j
}

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// dummyRedis is a client for tests that never reach Redis.
func dummyRedis(t *testing.T) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = c.Close() })
	return c
}
