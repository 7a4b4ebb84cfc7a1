// Command bmdrain measures how long `ferry worker` processes take to drain
// N Ruby-enqueued legacy migration jobs (BackgroundMigrationWorker /
// CopyColumn, -rows-per-job rows each, default 10), for each number of worker processes and each
// per-class concurrency (bm.concurrency) given: does adding workers finish
// a legacy migration sooner?
//
//	make build && go run ./bench/bmdrain -ferry bin/ferry -jobs 2000 -workers 1,3 -class-concurrency 1,4
//
// Each run: a fresh table of N*rows rows in DATABASE_URL's database; the
// workers start (each `--concurrency 10 --bm-concurrency C`) and register;
// then Ruby's Sidekiq 6.4 push_bulk enqueues the N jobs in queue
// background_migration and the clock runs until PostgreSQL shows every
// row copied. It flushes Redis database -db of REDIS_URL after claiming it
// as internal/testenv does; never point it at a production Redis.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

const table = "bench_bm_drain"

const rubyPush = `
require 'sidekiq'
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch('REDIS_URL') } }
n = Integer(ENV.fetch('JOBS'))
r = Integer(ENV.fetch('ROWS'))
args = (0...n).map { |i| ['CopyColumn', ['` + table + `', 'a', 'b', i * r + 1, i * r + r]] }
args.each_slice(1000) do |s|
  Sidekiq::Client.push_bulk('class' => 'BackgroundMigrationWorker', 'queue' => 'background_migration', 'retry' => 3, 'args' => s)
end
`

type options struct {
	ferry             string
	jobs, rows        int
	workers, classCon []int
	db                int
	timeout           time.Duration
}

func main() {
	var o options
	var workers, classCon string
	flag.StringVar(&o.ferry, "ferry", "bin/ferry", "ferry binary")
	flag.IntVar(&o.jobs, "jobs", 2000, "jobs per run")
	flag.IntVar(&o.rows, "rows-per-job", 10, "rows each job copies")
	flag.StringVar(&workers, "workers", "1,3", "worker process counts")
	flag.StringVar(&classCon, "class-concurrency", "1,4", "bm.concurrency values")
	flag.IntVar(&o.db, "db", 12, "Redis database number to use")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up a run after this long")
	flag.Parse()
	o.workers, o.classCon = ints(workers), ints(classCon)
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/bmdrain:", err)
		os.Exit(1)
	}
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench/bmdrain: bad count %q\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(ctx context.Context, o options) error {
	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	cfg := config.Defaults()
	cfg.ApplyEnv()
	ro, err := cfg.RedisOptions()
	if err != nil {
		return err
	}
	if o.db == 0 {
		return fmt.Errorf("-db 0 is not allowed: the benchmark flushes its database")
	}
	ctl := redis.NewClient(&redis.Options{Addr: ro.Addr, Username: ro.Username, Password: ro.Password})
	defer ctl.Close()
	claim := fmt.Sprintf("ferry:test:db:%d", o.db)
	if ok, err := ctl.SetNX(ctx, claim, "bench/bmdrain", time.Hour).Result(); err != nil || !ok {
		return fmt.Errorf("redis database %d is in use (%v); pick another -db", o.db, err)
	}
	defer ctl.Del(context.Background(), claim) // runs before ctl.Close
	ro.DB = o.db
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	redisURL := fmt.Sprintf("redis://%s/%d", ro.Addr, o.db)
	pool, err := config.NewPool(ctx, dbURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := ferryschema.Apply(ctx, pool); err != nil {
		return err
	}
	defer pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) //nolint:errcheck // best effort
	for _, c := range o.classCon {
		for _, w := range o.workers {
			d, err := drain(ctx, o, rdb, pool, redisURL, dbURL, w, c)
			if err != nil {
				return fmt.Errorf("workers=%d class-concurrency=%d: %w", w, c, err)
			}
			fmt.Printf("jobs=%d x %d rows  workers=%d bm.concurrency=%d: %s (%.0f jobs/s)\n", o.jobs, o.rows, w, c,
				d.Round(time.Millisecond), float64(o.jobs)/d.Seconds())
		}
	}
	return nil
}

// drain runs one configuration and returns the time from enqueue to the
// last row copied.
func drain(ctx context.Context, o options, rdb *redis.Client, pool *pgxpool.Pool, redisURL, dbURL string, workers, classCon int) (time.Duration, error) {
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return 0, err
	}
	for _, q := range []string{
		`DROP TABLE IF EXISTS ` + table,
		`CREATE TABLE ` + table + ` (id bigint PRIMARY KEY, a integer NOT NULL, b bigint)`,
		fmt.Sprintf(`INSERT INTO %s SELECT g, g FROM generate_series(1, %d) g`, table, o.jobs*o.rows),
		`VACUUM ANALYZE ` + table,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			return 0, fmt.Errorf("%s: %w", q, err)
		}
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	for range workers {
		cmd := exec.Command(o.ferry, "worker", "--concurrency", "10", "--bm-concurrency", strconv.Itoa(classCon),
			"--bm-max-running", strconv.Itoa(max(classCon, 4)), "--log-level", "warn")
		cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, cmd)
	}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		n, err := rdb.SCard(ctx, "processes").Result()
		return n == int64(workers), err
	}); err != nil {
		return 0, fmt.Errorf("workers did not register: %w", err)
	}
	start := time.Now()
	push := exec.Command("ruby", "-e", rubyPush)
	push.Env = append(os.Environ(), "REDIS_URL="+redisURL, "JOBS="+strconv.Itoa(o.jobs), "ROWS="+strconv.Itoa(o.rows))
	if out, err := push.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("ruby push_bulk: %w: %s", err, out)
	}
	err := waitFor(ctx, o.timeout, func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE b = a`).Scan(&n)
		return n == o.jobs*o.rows, err
	})
	return time.Since(start), err
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
