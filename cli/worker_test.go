package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// An explicit worker.max_retries 0 in the config file reaches the runtime
// (a failing retry:true job goes straight to the dead set, as in Sidekiq),
// and worker.timeout 0 is refused instead of becoming the 25 s default.
// Not parallel: Main writes package-level state (see TestBBMCheckFinalizeFlow).
func TestWorkerConfigExplicitZeros(t *testing.T) {
	t.Setenv(config.EnvDatabaseURL, "") // a Redis-only worker
	redisURL := testenv.RedisURL(t)
	o, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(o)
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := testenv.Context(t)
	path := filepath.Join(t.TempDir(), "ferry.yml")
	writeConfig := func(yml string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(ctx context.Context, args ...string) (int, string) {
		var out, errb bytes.Buffer
		all := append([]string{"--config", path, "--redis-url", redisURL, "--log-level", "error", "worker"}, args...)
		code := Main(ctx, all, &out, &errb, Options{})
		return code, errb.String()
	}

	writeConfig("worker:\n  max_retries: 0\n  queues: q\n  concurrency: 1\n")
	jid, err := sidekiq.NewClient(rdb).Push(ctx, "Nope::Job", json.RawMessage(`[1]`), sidekiq.PushOptions{Queue: "q", Retry: json.RawMessage("true")})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan int, 1)
	var stderr string
	go func() {
		code, errs := run(wctx)
		stderr = errs
		done <- code
	}()
	testenv.Eventually(t, 10*time.Second, "the failed job in the dead set", func() bool {
		return rdb.ZCard(ctx, "dead").Val() == 1
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("worker exited %d: %s", code, stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop")
	}
	if n := rdb.ZCard(ctx, "retry").Val(); n != 0 {
		t.Errorf("retry set has %d entries, want 0 with max_retries 0", n)
	}
	j, err := sidekiq.ParseJob([]byte(rdb.ZRange(ctx, "dead", 0, -1).Val()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := j.Int("retry_count"); j.JID() != jid || !ok || n != 0 {
		t.Errorf("dead entry %s: want jid %s with retry_count 0", j.Raw(), jid)
	}

	writeConfig("worker:\n  timeout: 0s\n")
	if code, errs := run(ctx); code != 2 || !strings.Contains(errs, "worker.timeout: must be > 0") {
		t.Errorf("worker.timeout 0 in the file: exit %d, stderr %q; want 2 naming worker.timeout", code, errs)
	}
	writeConfig("worker:\n  queues: q\n")
	if code, errs := run(ctx, "--timeout", "0"); code != 2 || !strings.Contains(errs, "worker.timeout: must be > 0") {
		t.Errorf("--timeout 0: exit %d, stderr %q; want 2 naming worker.timeout", code, errs)
	}
}
