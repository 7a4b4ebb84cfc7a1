package test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// With WaitForReplicas (redis.wait_replicas), a push counts only once a
// replica has it; while none confirms, it is made again without doubling
// what the master already holds, and gives up with ErrNotReplicated only
// when its context ends.
func TestPushWaitsForReplicas(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	master := startRedisServer(t)
	replica := startRedisServer(t)
	mc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", master.port)})
	defer mc.Close()
	rc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.port)})
	defer rc.Close()
	follow := func() {
		t.Helper()
		if err := rc.ReplicaOf(ctx, "127.0.0.1", strconv.Itoa(master.port)).Err(); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, "the replica in sync", func() bool {
			return strings.Contains(rc.Info(ctx, "replication").Val(), "master_link_status:up")
		})
	}
	follow()
	c := sidekiq.NewClient(mc, sidekiq.WaitForReplicas(1, 100*time.Millisecond))
	jid, err := c.Push(ctx, "Ferry::Noop", []byte(`[1]`), sidekiq.PushOptions{Queue: "durable"})
	if err != nil {
		t.Fatalf("push with a replica in sync: %v", err)
	}
	// Confirmed means the replica has it now, not eventually.
	if got := rc.LRange(ctx, "queue:durable", 0, -1).Val(); len(got) != 1 || !strings.Contains(got[0], jid) {
		t.Fatalf("replica's queue:durable = %q, want the job %s", got, jid)
	}

	// No replica: the push lands on the master once, is never confirmed,
	// and fails when its context ends, after several attempts.
	if err := rc.ReplicaOf(ctx, "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the master to see no replica", func() bool {
		return strings.Contains(mc.Info(ctx, "replication").Val(), "connected_slaves:0")
	})
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	_, err = c.Push(short, "Ferry::Noop", []byte(`[2]`), sidekiq.PushOptions{Queue: "alone"})
	if !errors.Is(err, sidekiq.ErrNotReplicated) {
		t.Fatalf("push without a replica = %v, want ErrNotReplicated", err)
	}
	if n := mc.LLen(ctx, "queue:alone").Val(); n != 1 {
		t.Fatalf("queue:alone holds %d jobs after the attempts, want 1 (made again without doubling)", n)
	}
	// A worker taking the job between attempts must not make it come back.
	if err := mc.Del(ctx, "queue:alone").Err(); err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel2()
	took := make(chan struct{})
	go func() {
		defer close(took)
		for short2.Err() == nil { // take it as a worker's fetch would
			if _, err := mc.RPop(short2, "queue:taken").Result(); err == nil {
				return
			}
		}
	}()
	if _, err := c.Push(short2, "Ferry::Noop", []byte(`[4]`), sidekiq.PushOptions{Queue: "taken"}); !errors.Is(err, sidekiq.ErrNotReplicated) {
		t.Fatalf("second push without a replica = %v, want ErrNotReplicated", err)
	}
	<-took
	if n := mc.LLen(ctx, "queue:taken").Val(); n != 0 {
		t.Fatalf("queue:taken holds %d jobs after a worker took the only one, want 0 (not pushed again)", n)
	}

	// A push that waits through the replica's return succeeds, once.
	done := make(chan error, 1)
	go func() {
		_, err := c.Push(ctx, "Ferry::Noop", []byte(`[3]`), sidekiq.PushOptions{Queue: "back"})
		done <- err
	}()
	follow()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("push while the replica came back: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("push did not finish after the replica came back")
	}
	if n := rc.LLen(ctx, "queue:back").Val(); n != 1 {
		t.Fatalf("replica's queue:back holds %d jobs, want 1", n)
	}
}
