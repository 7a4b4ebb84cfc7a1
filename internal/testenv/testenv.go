// Package testenv gives tests real, isolated Redis databases and PostgreSQL
// databases on the servers started by scripts/services (make test exports
// REDIS_URL and DATABASE_URL). Without them, tests skip, naming the variable.
package testenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
)

// Context returns a context cancelled at the end of the test (or after 2 minutes).
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// RedisURL returns a URL for a Redis database no other running test uses,
// flushed before use.
func RedisURL(t testing.TB) string {
	t.Helper()
	base, _ := config.TestURLs()
	if base == "" {
		t.Skip("REDIS_URL is not set (run `make test`, or `eval $(scripts/services start)`)")
	}
	ctx := context.Background()
	o, err := redis.ParseURL(base)
	if err != nil {
		t.Fatalf("REDIS_URL: %v", err)
	}
	o.DB = 0
	ctl := redis.NewClient(o)
	defer ctl.Close()
	dbs := 16
	if v, err := ctl.ConfigGet(ctx, "databases").Result(); err == nil {
		if n, err := strconv.Atoi(v["databases"]); err == nil {
			dbs = n
		}
	}
	// Claim a free database number with SETNX on db 0, released at cleanup.
	for attempt := 0; attempt < 10*dbs; attempt++ {
		n, err := ctl.Incr(ctx, "ferry:test:dbseq").Result()
		if err != nil {
			t.Fatalf("redis: %v", err)
		}
		// The last database is left to the benchmarks (bench/throughput).
		db := int(n%int64(dbs-2)) + 1
		claim := "ferry:test:db:" + strconv.Itoa(db)
		ok, err := ctl.SetNX(ctx, claim, t.Name(), 30*time.Minute).Result()
		if err != nil {
			t.Fatalf("redis: %v", err)
		}
		if !ok {
			continue
		}
		t.Cleanup(func() {
			c := redis.NewClient(o)
			defer c.Close()
			c.Del(context.Background(), claim)
		})
		u, _ := url.Parse(base)
		u.Path = "/" + strconv.Itoa(db)
		c := redis.NewClient(&redis.Options{Addr: o.Addr, DB: db})
		defer c.Close()
		if err := c.FlushDB(ctx).Err(); err != nil {
			t.Fatalf("redis flushdb: %v", err)
		}
		return u.String()
	}
	t.Fatalf("no free Redis database among %d", dbs)
	return ""
}

// Redis returns a client on a fresh Redis database, closed at cleanup.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	o.PoolSize = 50
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// DatabaseURL creates an empty PostgreSQL database for this test, dropped
// at cleanup, and returns its URL.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	_, base := config.TestURLs()
	if base == "" {
		t.Skip("DATABASE_URL is not set (run `make test`, or `eval $(scripts/services start)`)")
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("DATABASE_URL: %v", err)
	}
	defer admin.Close(ctx)
	name := "t_" + sanitize(t.Name()) + "_" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	if ViaPgBouncer() {
		// The pooler maps every database name to the same server.
		if cfg, err = pgx.ParseConfig(os.Getenv(envPgBouncerURL)); err != nil {
			t.Fatalf("%s: %v", envPgBouncerURL, err)
		}
	}
	u := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", url.PathEscape(cfg.User), cfg.Host, cfg.Port, name)
	if ViaPgBouncer() {
		// No server-side prepared statements, as ferry runs behind a pooler
		// (config.NewPool), so the tests' own pools work through it too.
		u += "&default_query_exec_mode=exec"
	}
	return u
}

// envPgBouncerURL is set by scripts/services to its PgBouncer in
// transaction mode; envViaPgBouncer=1 makes every test database URL go
// through it (CI's second pass over the PostgreSQL tests).
const (
	envPgBouncerURL = "FERRY_PGBOUNCER_URL"
	envViaPgBouncer = "FERRY_TEST_VIA_PGBOUNCER"
)

// ViaPgBouncer reports whether test databases are reached through
// PgBouncer in transaction mode.
func ViaPgBouncer() bool {
	return os.Getenv(envViaPgBouncer) == "1" && os.Getenv(envPgBouncerURL) != ""
}

// DirectURL returns the URL of the same database as u without the pooler
// (for what needs a real session: pg_dump, pg_terminate_backend of a
// specific backend).
func DirectURL(t testing.TB, u string) string {
	t.Helper()
	_, base := config.TestURLs()
	bc, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", url.PathEscape(c.User), bc.Host, bc.Port, c.Database)
}

// Postgres returns a pool on a fresh database, closed at cleanup.
func Postgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	u := DatabaseURL(t)
	pool, err := pgxpool.New(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}

// Eventually polls cond every 20ms until it is true or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// PooledURL returns u's database through the PgBouncer of scripts/services
// (transaction mode); the test skips when there is none.
func PooledURL(t testing.TB, u string) string {
	t.Helper()
	pb := os.Getenv(envPgBouncerURL)
	if pb == "" {
		t.Skip(envPgBouncerURL + " is not set (scripts/services starts a PgBouncer when it is installed)")
	}
	pc, err := pgx.ParseConfig(pb)
	if err != nil {
		t.Fatalf("%s: %v", envPgBouncerURL, err)
	}
	c, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable&default_query_exec_mode=exec", url.PathEscape(c.User), pc.Host, pc.Port, c.Database)
}

// DirectPostgres returns a pool on a fresh database that never goes
// through PgBouncer, for what needs a real session (pg_dump, pg_restore,
// session locks), closed at cleanup.
func DirectPostgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), DirectURL(t, DatabaseURL(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// AppLoad keeps n sessions of pool busy with short statements, as an
// application's would be, until stop is called (stop waits for them).
func AppLoad(ctx context.Context, pool *pgxpool.Pool, n int) (stop func()) {
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				_, _ = pool.Exec(lctx, `SELECT pg_sleep(0.002)`)
			}
		}()
	}
	return func() { cancel(); wg.Wait() }
}
