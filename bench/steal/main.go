// Command steal benchmarks `ferry bm steal` against the Ruby Sidekiq API
// doing what GitLab's steal does (iterate the scheduled set and the queue,
// JobRecord#delete each match), on identical data in the same run.
//
// ferry steals *and performs* every job; Ruby only deletes them. Both
// start from the same N jobs (Sidekiq 6.4's payloads, byte for byte): half
// queued, half scheduled, plus -other non-matching jobs interleaved. With
// -class copy (the default) each job is a CopyColumn of 10 rows of a table
// made for it in DATABASE_URL's database, tracked as GitLab tracks jobs
// (background_migration_jobs exists, so each job's mark_all_as_succeeded
// runs); -class noop performs nothing.
//
//	go run ./bench/steal -jobs 10000,100000 -concurrency 16
//
// It flushes and uses Redis database -db of REDIS_URL, after claiming it
// the way internal/testenv does (SETNX ferry:test:db:<n> on database 0), so
// it never collides with a running test. Never point it at a production
// Redis.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

type noopArgs []json.RawMessage

func (noopArgs) Kind() string { return "BenchNoop" }

// copyTable is the table -class copy jobs copy in, 10 rows per job.
const copyTable = "bench_steal_copy"

const rubyScript = `
require 'sidekiq'
require 'sidekiq/api'
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch('REDIS_URL') } }
match = ->(j) { j.klass == 'BackgroundMigrationWorker' && j.args[0] == ENV.fetch('CLASS') }
t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
n = 0
Sidekiq::ScheduledSet.new.each { |j| if match.(j) then j.delete; n += 1 end }
Sidekiq::Queue.new('background_migration').each { |j| if match.(j) then j.delete; n += 1 end }
puts "#{n} #{Process.clock_gettime(Process::CLOCK_MONOTONIC) - t}"
`

func main() {
	jobsFlag := flag.String("jobs", "10000,100000", "comma-separated job counts")
	other := flag.Float64("other", 0.1, "extra non-matching jobs, as a fraction of -jobs")
	db := flag.Int("db", 13, "Redis database number to use")
	skipRuby := flag.Bool("skip-ruby", false, "only time ferry")
	class := flag.String("class", "copy", "what each job does: copy (CopyColumn of 10 rows, needs DATABASE_URL) or noop")
	concurrency := flag.Int("concurrency", 16, "jobs ferry performs at once (bm steal --concurrency)")
	flag.Parse()
	if *class != "copy" && *class != "noop" {
		fail(fmt.Errorf("-class must be copy or noop, got %q", *class))
	}

	cfg := config.Defaults()
	cfg.ApplyEnv()
	o, err := cfg.RedisOptions()
	if err != nil {
		fail(err)
	}
	o.DB = *db
	rdb := redis.NewClient(o)
	defer rdb.Close()
	ctx := context.Background()
	if *db == 0 {
		fail(fmt.Errorf("-db 0 is not allowed: the benchmark flushes its database"))
	}
	ctl := redis.NewClient(&redis.Options{Addr: o.Addr, Username: o.Username, Password: o.Password, DB: 0})
	defer ctl.Close()
	claim := fmt.Sprintf("ferry:test:db:%d", *db)
	if ok, err := ctl.SetNX(ctx, claim, "bench/steal", time.Hour).Result(); err != nil {
		fail(err)
	} else if !ok {
		fail(fmt.Errorf("redis database %d is in use by %q; pick another -db", *db, ctl.Get(ctx, claim).Val()))
	}
	release = func() { ctl.Del(context.Background(), claim) }
	defer release()
	u := fmt.Sprintf("redis://%s/%d", o.Addr, *db)

	type row struct {
		n             int
		ferry, ruby   time.Duration
		rubyDeleted   int
		ferryPerJobUs float64
	}
	var rows []row
	for _, s := range strings.Split(*jobsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fail(fmt.Errorf("-jobs: bad count %q", s))
		}
		migration := "BenchNoop"
		if *class == "copy" {
			migration = "CopyColumn"
		}
		members := makeJobs(n, int(float64(n)**other), migration)
		r := row{n: n}

		load(ctx, rdb, members)
		runner, check := newRunner(ctx, *class, n, *concurrency)
		co := &legacy.Coordinator{Redis: rdb, Runner: runner, Queues: []string{legacy.QueueName}}
		start := time.Now()
		res, err := co.Steal(ctx, migration, legacy.StealOptions{Concurrency: *concurrency})
		r.ferry = time.Since(start)
		if err == nil {
			err = check()
		}
		if err != nil || res.Performed != n {
			fail(fmt.Errorf("ferry steal: performed %d of %d: %w", res.Performed, n, err))
		}
		r.ferryPerJobUs = float64(r.ferry.Microseconds()) / float64(n)

		if !*skipRuby {
			load(ctx, rdb, members)
			cmd := exec.Command("ruby", "-e", rubyScript)
			cmd.Env = append(os.Environ(), "REDIS_URL="+u, "CLASS="+migration)
			cmd.Stderr = nil
			out, err := cmd.Output()
			if err != nil {
				fail(fmt.Errorf("ruby: %w", err))
			}
			var secs float64
			if _, err := fmt.Sscanf(string(out), "%d %g", &r.rubyDeleted, &secs); err != nil {
				fail(fmt.Errorf("ruby output %q: %w", out, err))
			}
			r.ruby = time.Duration(secs * float64(time.Second))
		}
		rdb.FlushDB(ctx)
		rows = append(rows, r)
		fmt.Printf("jobs=%d %s (+%d other)  ferry steal+perform (concurrency %d): %s (%.1f µs/job, %.0f jobs/s)  ruby scan+delete: %s (deleted %d, %.0f jobs/s)  ruby/ferry: %.1fx\n",
			n, migration, int(float64(n)**other), *concurrency, r.ferry.Round(time.Millisecond), r.ferryPerJobUs, float64(n)/r.ferry.Seconds(),
			r.ruby.Round(time.Millisecond), r.rubyDeleted, float64(r.rubyDeleted)/max(r.ruby.Seconds(), 1e-9), r.ruby.Seconds()/r.ferry.Seconds())
	}
	if pool != nil {
		_, _ = pool.Exec(ctx, `DROP TABLE IF EXISTS `+copyTable)
		pool.Close()
	}
	for i := 1; i < len(rows); i++ {
		a, b := rows[i-1], rows[i]
		fmt.Printf("growth %d -> %d jobs (x%.0f): ferry x%.1f, ruby x%.1f\n", a.n, b.n, float64(b.n)/float64(a.n),
			b.ferry.Seconds()/a.ferry.Seconds(), b.ruby.Seconds()/max(a.ruby.Seconds(), 1e-9))
	}
}

type member struct {
	raw   string
	score float64 // 0 = queued
}

// newRunner returns the runner the steal performs with and a check of
// the work done: a counter for noop; for copy, a fresh table of 10 rows per
// job, ferry's tables, and a count of the rows copied.
func newRunner(ctx context.Context, class string, n, concurrency int) (*legacy.Runner, func() error) {
	reg := legacy.NewRegistry()
	if class == "noop" {
		var performed atomic.Int64
		legacy.Add(reg, legacy.PerformFunc[noopArgs](func(context.Context, *legacy.Job[noopArgs]) error {
			performed.Add(1)
			return nil
		}))
		return &legacy.Runner{Registry: reg}, func() error {
			if int(performed.Load()) != n {
				return fmt.Errorf("performed %d", performed.Load())
			}
			return nil
		}
	}
	legacy.AddCopyColumn(reg, legacy.CopyColumn{})
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fail(fmt.Errorf("-class copy needs DATABASE_URL (or use -class noop)"))
	}
	if pool == nil {
		p, err := config.NewPool(ctx, url, int32(concurrency)+2)
		if err != nil {
			fail(err)
		}
		pool = p
		if err := ferryschema.Apply(ctx, pool); err != nil {
			fail(err)
		}
	}
	for _, q := range []string{
		`DROP TABLE IF EXISTS ` + copyTable,
		`CREATE TABLE ` + copyTable + ` (id bigint PRIMARY KEY, a integer NOT NULL, b bigint)`,
		fmt.Sprintf(`INSERT INTO %s SELECT g, g FROM generate_series(1, %d) g`, copyTable, n*10),
		`VACUUM ANALYZE ` + copyTable,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			fail(fmt.Errorf("%s: %w", q, err))
		}
	}
	return &legacy.Runner{Registry: reg, DB: pool}, func() error {
		var copied int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+copyTable+` WHERE b = a`).Scan(&copied); err != nil {
			return err
		}
		if copied != n*10 {
			return fmt.Errorf("copied %d rows of %d", copied, n*10)
		}
		return nil
	}
}

// pool is the -class copy database, opened once.
var pool *pgxpool.Pool

// makeJobs builds Sidekiq 6.4-shaped payloads: n matching (half queued,
// half scheduled) and extra others interleaved.
func makeJobs(n, extra int, migration string) []member {
	now := float64(time.Now().Unix())
	out := make([]member, 0, n+extra)
	every := 0
	if extra > 0 {
		every = max(n/extra, 1)
	}
	for i := range n {
		args := fmt.Sprintf(`["BenchNoop",[%d,%d]]`, i*100, i*100+99)
		if migration == "CopyColumn" {
			args = fmt.Sprintf(`["CopyColumn",[%q,"a","b",%d,%d]]`, copyTable, i*10+1, i*10+10)
		}
		j := sidekiq.NewJob(legacy.WorkerClass, json.RawMessage(args), legacy.QueueName)
		j.SetString("jid", sidekiq.NewJID())
		j.Set("retry", json.RawMessage("3"))
		j.SetTime("created_at", now)
		m := member{}
		if i%2 == 0 {
			j.SetTime("enqueued_at", now)
		} else {
			m.score = now + 3600 + float64(i)
		}
		m.raw = string(j.Encode())
		out = append(out, m)
		if every > 0 && i%every == 0 && extra > 0 {
			extra--
			o := sidekiq.NewJob(legacy.WorkerClass, json.RawMessage(fmt.Sprintf(`["OtherMigration",[%d]]`, i)), legacy.QueueName)
			o.SetString("jid", sidekiq.NewJID())
			o.SetTime("created_at", now)
			om := member{}
			if i%4 == 0 {
				o.SetTime("enqueued_at", now)
			} else {
				om.score = now + 7200 + float64(i)
			}
			om.raw = string(o.Encode())
			out = append(out, om)
		}
	}
	return out
}

func load(ctx context.Context, rdb *redis.Client, members []member) {
	rdb.FlushDB(ctx)
	p := rdb.Pipeline()
	p.SAdd(ctx, "queues", legacy.QueueName)
	for i, m := range members {
		if m.score == 0 {
			p.LPush(ctx, sidekiq.QueueKey(legacy.QueueName), m.raw)
		} else {
			p.ZAdd(ctx, "schedule", redis.Z{Score: m.score, Member: m.raw})
		}
		if i%5000 == 4999 {
			if _, err := p.Exec(ctx); err != nil {
				fail(err)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		fail(err)
	}
}

// release frees the claimed database; fail calls it because os.Exit skips defers.
var release = func() {}

func fail(err error) {
	release()
	if pool != nil {
		pool.Close()
	}
	fmt.Fprintln(os.Stderr, "bench/steal:", err)
	os.Exit(1)
}
