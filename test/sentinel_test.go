package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// startSentinel runs a Redis Sentinel (redis-server --sentinel, the binary
// Debian's redis-sentinel links to) watching the master on masterPort as
// "mymaster", and returns its port.
func startSentinel(t *testing.T, masterPort int) int {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
sentinel monitor mymaster 127.0.0.1 %d 1
sentinel down-after-milliseconds mymaster 2000
sentinel failover-timeout mymaster 10000
`, port, dir, masterPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "redis-sentinel", childEnv(), "redis-server", conf, "--sentinel")
	c := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1})
	defer c.Close()
	testenv.Eventually(t, 20*time.Second, "the sentinel to see the master and its replica", func() bool {
		if p.exited() {
			t.Fatalf("sentinel exited: %s\n%s", p.state(), p.out.String())
		}
		r, err := c.Replicas(context.Background(), "mymaster").Result()
		return err == nil && len(r) == 1 && !strings.Contains(r[0]["flags"], "down")
	})
	return port
}

// Redis behind Sentinel, configured as Sidekiq users do (the URL names the
// master, the sentinels in REDIS_SENTINELS or YAML in GitLab's shape): a
// worker runs jobs, carries on through a SENTINEL FAILOVER without a
// restart and runs the jobs pushed to the new master. REDIS_PROVIDER names
// the variable holding the URL, as in Sidekiq.
func TestRedisSentinelFailoverAndProvider(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	master := startRedisServer(t)
	replica := startRedisServer(t)
	rc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.port)})
	defer rc.Close()
	if err := rc.ReplicaOf(ctx, "127.0.0.1", strconv.Itoa(master.port)).Err(); err != nil {
		t.Fatal(err)
	}
	sport := startSentinel(t, master.port)
	sentinels := fmt.Sprintf("127.0.0.1:%d", sport)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "mymaster", SentinelAddrs: []string{sentinels}})
	defer rdb.Close()

	w := startProc(t, "ferry worker", childEnv("REDIS_URL=redis://mymaster/0", "REDIS_SENTINELS="+sentinels), ferryBin,
		"worker", "--queues", "sq", "--concurrency", "5")
	push := func(n int) {
		t.Helper()
		c := sidekiq.NewClient(rdb)
		for range n {
			if _, err := c.Push(ctx, "Ferry::Noop", []byte(`[]`), sidekiq.PushOptions{Queue: "sq"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	processed := func(want int64) func() bool {
		return func() bool {
			if w.exited() {
				t.Fatalf("the worker exited: %s", w.state())
			}
			n, _ := rdb.Get(ctx, "stat:processed").Int64()
			return n >= want && rdb.LLen(ctx, "queue:sq").Val() == 0
		}
	}
	push(100)
	testenv.Eventually(t, 30*time.Second, "the first 100 jobs run", processed(100))
	// A graceful failover loses nothing only once the replica has caught
	// up (its first sync may still be pending: Redis delays diskless syncs).
	mc := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", master.port)})
	defer mc.Close()
	testenv.Eventually(t, 30*time.Second, "the replica in sync", func() bool {
		ri, mi := rc.Info(ctx, "replication").Val(), mc.Info(ctx, "replication").Val()
		return strings.Contains(ri, "master_link_status:up") && infoField(ri, "slave_repl_offset") != "" &&
			infoField(ri, "slave_repl_offset") == infoField(mi, "master_repl_offset")
	})

	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinels})
	defer sc.Close()
	if err := sc.Failover(ctx, "mymaster").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the replica to be the master", func() bool {
		addr, err := sc.GetMasterAddrByName(ctx, "mymaster").Result()
		return err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(replica.port)
	})
	// Until Sentinel turns the old master into a replica, clients still
	// connected to it write there and those writes are lost (README:
	// failovers are not covered); count from then on.
	testenv.Eventually(t, 30*time.Second, "the old master to be a replica", func() bool {
		return strings.Contains(mc.Info(ctx, "replication").Val(), "role:slave")
	})
	newMaster := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.port)})
	defer newMaster.Close()
	base, _ := newMaster.Get(ctx, "stat:processed").Int64()
	push(100)
	testenv.Eventually(t, 60*time.Second, "the worker to run the jobs pushed after the failover", processed(base+100))
	testenv.Eventually(t, 30*time.Second, "the worker to heartbeat on the new master", func() bool {
		n, _ := newMaster.SCard(ctx, "processes").Result()
		return n == 1
	})

	// GitLab's resque.yml shape: sentinels as host/port mappings.
	cfg := filepath.Join(t.TempDir(), "ferry.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("redis:\n  sentinels:\n    - host: 127.0.0.1\n      port: %d\n", sport)), 0o644); err != nil {
		t.Fatal(err)
	}
	enq := startProc(t, "ferry enqueue", childEnv("REDIS_URL=redis://mymaster/0", "FERRY_CONFIG="+cfg), ferryBin,
		"enqueue", "Ferry::Noop", "[]", "--queue", "yaml_q")
	if code := enq.waitExit(t, 30*time.Second); code != 0 {
		t.Fatalf("ferry enqueue with sentinels in YAML: exit %d\n%s", code, enq.out.String())
	}
	if n := newMaster.LLen(ctx, "queue:yaml_q").Val(); n != 1 {
		t.Fatalf("queue:yaml_q on the new master has %d jobs, want 1", n)
	}

	// A master name the sentinels do not know: said so, not "unreachable".
	wrong := startProc(t, "ferry enqueue", childEnv("REDIS_URL=redis://othermaster/0", "REDIS_SENTINELS="+sentinels), ferryBin,
		"enqueue", "Ferry::Noop", "[]")
	if code := wrong.waitExit(t, 30*time.Second); code != 1 || !strings.Contains(wrong.out.String(), `know no master named "othermaster"`) {
		t.Fatalf("ferry enqueue naming a master the sentinels do not know: exit %d\n%s", code, wrong.out.String())
	}

	// No sentinel answers: said so at once, naming the setting.
	none := startProc(t, "ferry enqueue", childEnv("REDIS_URL=redis://mymaster/0", fmt.Sprintf("REDIS_SENTINELS=127.0.0.1:%d", freePort(t))), ferryBin,
		"enqueue", "Ferry::Noop", "[]")
	if code := none.waitExit(t, 60*time.Second); code != 1 || !strings.Contains(none.out.String(), "none of the sentinels in REDIS_SENTINELS answered") {
		t.Fatalf("ferry enqueue with no sentinel listening: exit %d\n%s", code, none.out.String())
	}

	// REDIS_PROVIDER: the variable it names wins over REDIS_URL.
	prov := startProc(t, "ferry enqueue", childEnv("REDIS_URL=redis://127.0.0.1:1/0", "REDIS_PROVIDER=MY_REDIS",
		fmt.Sprintf("MY_REDIS=redis://127.0.0.1:%d/2", replica.port)), ferryBin, "enqueue", "Ferry::Noop", "[]", "--queue", "prov_q")
	if code := prov.waitExit(t, 30*time.Second); code != 0 {
		t.Fatalf("ferry enqueue with REDIS_PROVIDER: exit %d\n%s", code, prov.out.String())
	}
	db2 := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", replica.port), DB: 2})
	defer db2.Close()
	if n := db2.LLen(ctx, "queue:prov_q").Val(); n != 1 {
		t.Fatalf("queue:prov_q in the database REDIS_PROVIDER's variable names has %d jobs, want 1", n)
	}
	bad := startProc(t, "ferry enqueue", childEnv("REDIS_PROVIDER=redis://127.0.0.1:1/0"), ferryBin, "enqueue", "Ferry::Noop", "[]")
	if code := bad.waitExit(t, 30*time.Second); code != 2 || !strings.Contains(bad.out.String(), "REDIS_PROVIDER: must be the name of the variable") {
		t.Fatalf("REDIS_PROVIDER holding a URL: exit %d, want 2 naming the mistake\n%s", code, bad.out.String())
	}
}

// rediss:// reaches a TLS-only Redis; the server's CA comes from the system
// trust store (here SSL_CERT_FILE, which Go reads on Linux).
func TestRedisTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCA(t, dir)
	port := freePort(t)
	p := startProc(t, "redis-server tls", childEnv(), "redis-server", "--port", "0", "--tls-port", strconv.Itoa(port),
		"--bind", "127.0.0.1", "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile,
		"--tls-auth-clients", "no", "--save", "", "--dir", dir)
	url := fmt.Sprintf("rediss://localhost:%d/0", port)
	env := childEnv("REDIS_URL="+url, "SSL_CERT_FILE="+caFile)
	var out string
	testenv.Eventually(t, 20*time.Second, "ferry enqueue over TLS", func() bool {
		if p.exited() {
			t.Fatalf("redis-server exited: %s\n%s", p.state(), p.out.String())
		}
		enq := startProc(t, "ferry enqueue", env, ferryBin, "enqueue", "Ferry::Noop", "[]", "--queue", "tls_q")
		code := enq.waitExit(t, 30*time.Second)
		out = enq.out.String()
		return code == 0
	})
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.TLSConfig = tlsClientConfig(t, caFile)
	c := redis.NewClient(opt)
	defer c.Close()
	if n, err := c.LLen(testenv.Context(t), "queue:tls_q").Result(); err != nil || n != 1 {
		t.Fatalf("queue:tls_q: %d jobs (%v), want 1; ferry said %s", n, err, out)
	}
	plain := startProc(t, "ferry enqueue", childEnv(fmt.Sprintf("REDIS_URL=redis://localhost:%d/0", port)), ferryBin, "enqueue", "Ferry::Noop", "[]")
	if code := plain.waitExit(t, 30*time.Second); code == 0 {
		t.Fatalf("redis:// to a TLS-only server succeeded:\n%s", plain.out.String())
	}
}

// infoField is one field of a Redis INFO reply.
func infoField(info, name string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
			return v
		}
	}
	return ""
}

// Sentinels with a password (requirepass): a wrong or missing
// REDIS_SENTINEL_PASSWORD is named as the setting to fix, not reported as
// "all sentinels unreachable".
func TestRedisSentinelPasswordRefused(t *testing.T) {
	t.Parallel()
	port, dir := freePort(t), t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	// The master need not run: the sentinel names it from its config.
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nrequirepass s3cret\nsentinel monitor mymaster 127.0.0.1 %d 1\n",
		port, dir, freePort(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "redis-sentinel", childEnv(), "redis-server", conf, "--sentinel")
	c := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Password: "s3cret", MaxRetries: -1})
	defer c.Close()
	testenv.Eventually(t, 20*time.Second, "the sentinel to answer", func() bool {
		if p.exited() {
			t.Fatalf("sentinel exited: %s\n%s", p.state(), p.out.String())
		}
		return c.Ping(context.Background()).Err() == nil
	})
	sentinels := fmt.Sprintf("REDIS_SENTINELS=127.0.0.1:%d", port)
	for _, env := range [][]string{{"REDIS_SENTINEL_PASSWORD=wrong"}, nil} {
		e := startProc(t, "ferry enqueue", childEnv(append([]string{"REDIS_URL=redis://mymaster/0", sentinels}, env...)...), ferryBin,
			"enqueue", "Ferry::Noop", "[]")
		if code := e.waitExit(t, 60*time.Second); code != 1 || !strings.Contains(e.out.String(), "refuse the sentinel password") ||
			!strings.Contains(e.out.String(), "REDIS_SENTINEL_PASSWORD") {
			t.Fatalf("sentinel password %v: exit %d\n%s", env, code, e.out.String())
		}
	}
}
