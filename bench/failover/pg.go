package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// services is a private PostgreSQL + Redis + PgBouncer run by
// scripts/services in a state dir of its own.
type services struct {
	root, state             string
	redisURL, dbURL, pgbURL string
	pgbPIDFile              string
}

func (s *services) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.root, "scripts", "services"), args...)
	cmd.Env = append(os.Environ(), "FERRY_STATE_DIR="+s.state, "FERRY_NO_CHROMIUM=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), fmt.Errorf("scripts/services %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "", fmt.Errorf("run from the ferry checkout (go env GOMOD: %v)", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// withDB returns u with its database (path) replaced.
func withDB(u, db string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = "/" + db
	return p.String()
}

// withAppName returns u naming its connections; names starting with
// "ferry" are not taken for an application's load by the pacing.
func withAppName(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	q := p.Query()
	q.Set("application_name", name)
	p.RawQuery = q.Encode()
	return p.String()
}

// pgPath is one set of workers: straight to PostgreSQL or through
// PgBouncer, with a database of its own.
type pgPath struct {
	name      string
	db        string
	directURL string // for the benchmark's own queries and `ferry setup`
	workerURL string // what the workers get as DATABASE_URL
	pool      *pgxpool.Pool
}

// pgResult is what one restart found on one path.
type pgResult struct {
	mode, path                 string
	stopTook, down             time.Duration
	bbmFirstCommit, bbmDone    time.Duration // after PostgreSQL accepted connections again; -1: never
	bbmCopiedAtStop            int64
	bbmLost, bbmTwice          int64
	bbmStatus                  int
	workerDied                 int
	exceptions                 string
	legacyRerun, legacyDone    time.Duration
	legacyLost, legacyTwice    int64
	legacyRetrySet, legacyDead int64
	legacyRescheduled          int
	workersAlive, workers      int
	errorLines                 int
	pgbouncer                  string
}

func pgRuns(ctx context.Context, o options) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	bin := o.ferry
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(root, bin)
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("ferry binary %s: %w (run `make build` or pass -ferry)", bin, err)
	}
	var cl cleanups
	defer cl.run()
	// Under the checkout's .state (git-ignored, and reachable by the
	// PostgreSQL run user, unlike a 0700 temp dir).
	if err := os.MkdirAll(filepath.Join(root, ".state"), 0o755); err != nil {
		return err
	}
	state, err := os.MkdirTemp(filepath.Join(root, ".state"), "failover-")
	if err != nil {
		return err
	}
	s := &services{root: root, state: state}
	cl.add(func() {
		if _, err := s.run(context.Background(), "stop"); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		if !o.keepState {
			_ = os.RemoveAll(state)
		}
	})
	out, err := s.run(ctx, "start")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "export REDIS_URL="); ok {
			s.redisURL = v
		}
		if v, ok := strings.CutPrefix(line, "export DATABASE_URL="); ok {
			s.dbURL = v
		}
		if v, ok := strings.CutPrefix(line, "export FERRY_PGBOUNCER_URL="); ok {
			s.pgbURL = v
		}
	}
	if s.redisURL == "" || s.dbURL == "" {
		return fmt.Errorf("scripts/services start printed no URLs:\n%s", out)
	}
	if pgHome, err := os.ReadFile(filepath.Join(state, "pg.path")); err == nil {
		s.pgbPIDFile = filepath.Join(strings.TrimSpace(string(pgHome)), "pgbouncer", "pgbouncer.pid")
	}
	if o.loginRetry > 0 {
		if err := pgbouncerLoginRetry(s, o.loginRetry); err != nil {
			return err
		}
	}
	logDir := filepath.Join(state, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	if o.keepState {
		fmt.Printf("postgresql: services and logs in %s\n", state)
	}

	var paths []*pgPath
	for _, name := range splitList(o.pgPaths) {
		p := &pgPath{name: name}
		switch name {
		case "direct":
			p.db = "ferry"
			p.directURL = s.dbURL
			p.workerURL = s.dbURL
		case "pgbouncer":
			if s.pgbURL == "" {
				return errors.New("scripts/services started no PgBouncer (is pgbouncer installed?)")
			}
			p.db = "ferry_pgb"
			p.directURL = withDB(s.dbURL, p.db)
			p.workerURL = withDB(s.pgbURL, p.db)
		default:
			return fmt.Errorf("unknown path %q (want direct or pgbouncer)", name)
		}
		paths = append(paths, p)
	}
	admin, err := pgx.Connect(ctx, withAppName(s.dbURL, "ferry-bench"))
	if err != nil {
		return err
	}
	for _, p := range paths {
		if p.db != "ferry" {
			if _, err := admin.Exec(ctx, "CREATE DATABASE "+p.db); err != nil {
				_ = admin.Close(ctx)
				return err
			}
		}
	}
	_ = admin.Close(ctx)
	for _, p := range paths {
		if out, err := ferryCmd(ctx, bin, s.redisURL, p.directURL, "setup"); err != nil {
			return fmt.Errorf("ferry setup (%s): %v\n%s", p.name, err, out)
		}
		p.pool, err = pgxpool.New(ctx, withAppName(p.directURL, "ferry-bench"))
		if err != nil {
			return err
		}
		cl.add(p.pool.Close)
	}

	var errs []error
	for i, mode := range splitList(o.pgModes) {
		if mode != "fast" && mode != "immediate" {
			return fmt.Errorf("unknown stop mode %q (want fast or immediate)", mode)
		}
		results, err := pgRestart(ctx, o, s, bin, logDir, paths, mode, i)
		for _, r := range results {
			r.print(o)
		}
		if err != nil {
			fmt.Printf("postgresql -m %s: FAILED: %v\n", mode, err)
			errs = append(errs, fmt.Errorf("-m %s: %w", mode, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func ferryCmd(ctx context.Context, bin, redisURL, dbURL string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(environ([]string{"DATABASE_DIRECT_URL", "REDIS_PROVIDER", "REDIS_SENTINELS"}),
		"REDIS_URL="+redisURL, "DATABASE_URL="+dbURL)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// countingTable creates a table whose trigger counts the writes of each
// row (every UPDATE, changed value or not) and records when the row was
// last written, and sleeps 10 ms every 100 rows so a copy takes a while.
func countingTable(ctx context.Context, pool *pgxpool.Pool, name string, rows int) error {
	_, err := pool.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s;
		CREATE TABLE %[1]s (id int PRIMARY KEY, v int NOT NULL, v_big bigint, writes int NOT NULL DEFAULT 0, written_at timestamptz);
		INSERT INTO %[1]s SELECT g, g FROM generate_series(1, %[2]d) g; ANALYZE %[1]s;
		CREATE OR REPLACE FUNCTION %[1]s_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			NEW.writes := OLD.writes + 1; NEW.written_at := clock_timestamp();
			IF NEW.id %% 100 = 0 THEN PERFORM pg_sleep(0.01); END IF;
			RETURN NEW; END $$;
		CREATE TRIGGER %[1]s_count BEFORE UPDATE ON %[1]s FOR EACH ROW EXECUTE FUNCTION %[1]s_count()`, name, rows))
	return err
}

// pgRestart runs one restart of PostgreSQL (stop -m mode, -down, start)
// in the middle of a batched migration and a legacy job on every path.
func pgRestart(ctx context.Context, o options, s *services, bin, logDir string, paths []*pgPath, mode string, round int) ([]*pgResult, error) {
	var cl cleanups
	defer cl.run()
	bt, lt := "b_"+mode, "l_"+mode
	workers := map[string][]*proc{}
	redisURLs := map[string]string{}
	var results []*pgResult
	for j, p := range paths {
		r := &pgResult{mode: mode, path: p.name, bbmFirstCommit: -1, bbmDone: -1, legacyRerun: -1, legacyDone: -1}
		results = append(results, r)
		// A Redis database of its own per restart and path: no lease or
		// process left over from the run before.
		redisURLs[p.name] = withDB(s.redisURL, strconv.Itoa(1+round*len(paths)+j))
		if err := countingTable(ctx, p.pool, bt, o.bbmRows); err != nil {
			return results, err
		}
		if o.legacy {
			if err := countingTable(ctx, p.pool, lt, o.legacyRows); err != nil {
				return results, err
			}
		}
		for k := range o.pgWorkers {
			w, err := startProc(logDir, fmt.Sprintf("%s-%s-worker%d", mode, p.name, k+1),
				[]string{"REDIS_URL=" + redisURLs[p.name], "DATABASE_URL=" + p.workerURL, "FERRY_LOG_LEVEL=info"},
				[]string{"DATABASE_DIRECT_URL", "REDIS_PROVIDER", "REDIS_SENTINELS", "REDIS_URL", "DATABASE_URL"},
				bin, "worker", "--concurrency", "4", "--timeout", "5s")
			if err != nil {
				return results, err
			}
			cl.add(func() { w.stop(syscall.SIGTERM, 15*time.Second) })
			workers[p.name] = append(workers[p.name], w)
		}
		r.workers = o.pgWorkers
		if o.legacy {
			args := fmt.Sprintf(`["CopyColumn",["%s","v","v_big",1,%d]]`, lt, o.legacyRows)
			if out, err := ferryCmd(ctx, bin, redisURLs[p.name], p.workerURL, "enqueue", "BackgroundMigrationWorker", args,
				"--queue", "background_migration", "--retry", "3"); err != nil {
				return results, fmt.Errorf("ferry enqueue (%s): %v\n%s", p.name, err, out)
			}
		}
		if out, err := ferryCmd(ctx, bin, redisURLs[p.name], p.workerURL, "bbm", "queue",
			"CopyColumnUsingBackgroundMigrationJob", bt, "id", `[["v"],["v_big"]]`); err != nil {
			return results, fmt.Errorf("ferry bbm queue (%s): %v\n%s", p.name, err, out)
		}
	}
	count := func(p *pgPath, table string) (int64, error) {
		var n int64
		err := p.pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE v_big IS NOT NULL`).Scan(&n)
		return n, err
	}
	// Mid-way on every path: a fifth of the batched migration committed
	// and the legacy job's UPDATE running (it commits only at its end).
	if err := waitFor(ctx, 90*time.Second, 50*time.Millisecond, "every path to be mid-migration and mid-legacy-job", func() (bool, error) {
		for _, p := range paths {
			for _, w := range workers[p.name] {
				if w.exited() {
					return false, fmt.Errorf("%s exited: %v\n%s", w.name, w.err, w.output())
				}
			}
			n, err := count(p, bt)
			if err != nil || n < int64(o.bbmRows)/5 {
				return false, nil
			}
			if n == int64(o.bbmRows) {
				return false, fmt.Errorf("%s: the migration finished before the restart (use more -bbm-rows)", p.name)
			}
			if o.legacy {
				var active bool
				if err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
					WHERE datname = current_database() AND state = 'active' AND query ILIKE 'UPDATE %`+lt+`%')`).Scan(&active); err != nil || !active {
					if done, _ := count(p, lt); done == int64(o.legacyRows) {
						return false, fmt.Errorf("%s: the legacy job finished before the restart (use more -legacy-rows)", p.name)
					}
					return false, nil
				}
			}
		}
		return true, nil
	}); err != nil {
		return results, err
	}
	for i, p := range paths {
		results[i].bbmCopiedAtStop, _ = count(p, bt)
	}
	pgbPID := readPID(s.pgbPIDFile)

	// The fault.
	tStop := time.Now()
	if _, err := s.run(ctx, "pg-stop", mode); err != nil {
		return results, err
	}
	stopTook := time.Since(tStop)
	if err := sleep(ctx, o.down); err != nil {
		return results, err
	}
	pgbDuring := pgbPID > 0 && syscall.Kill(pgbPID, 0) == nil
	startErr := make(chan error, 1)
	go func() { _, err := s.run(ctx, "pg-start"); startErr <- err }()
	var tBack time.Time
	if err := waitFor(ctx, 60*time.Second, 20*time.Millisecond, "PostgreSQL to accept connections again", func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, withAppName(s.dbURL, "ferry-bench"))
		if err != nil {
			return false, nil
		}
		tBack = time.Now()
		_ = c.Close(cctx)
		return true, nil
	}); err != nil {
		return results, err
	}
	down := tBack.Sub(tStop)
	if err := <-startErr; err != nil {
		return results, err
	}
	pgbAfter := readPID(s.pgbPIDFile)

	// Recovery on every path, bounded by -pg-timeout.
	var wg sync.WaitGroup
	errs := make([]error, len(paths))
	for i, p := range paths {
		r := results[i]
		r.stopTook, r.down = stopTook, down
		switch {
		case p.name != "pgbouncer":
		case pgbPID > 0 && pgbDuring && pgbAfter == pgbPID && syscall.Kill(pgbPID, 0) == nil:
			r.pgbouncer = fmt.Sprintf("PgBouncer (pid %d) up throughout", pgbPID)
		default:
			r.pgbouncer = fmt.Sprintf("PgBouncer NOT up throughout (pid %d before, alive while down: %v, pid %d after)", pgbPID, pgbDuring, pgbAfter)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = waitFor(ctx, o.pgTimeout, 100*time.Millisecond, p.name+": the migration to finish", func() (bool, error) {
				if r.bbmDone < 0 {
					var st int
					if err := p.pool.QueryRow(ctx, `SELECT status FROM batched_background_migrations WHERE table_name = $1`, bt).Scan(&st); err == nil {
						r.bbmStatus = st
						switch st {
						case 3:
							r.bbmDone = time.Since(tBack)
						case 4:
							return false, errors.New("the batched migration failed")
						}
					}
				}
				if o.legacy && r.legacyDone < 0 {
					if n, err := count(p, lt); err == nil && n == int64(o.legacyRows) {
						r.legacyDone = time.Since(tBack)
					}
				}
				return r.bbmDone >= 0 && (!o.legacy || r.legacyDone >= 0), nil
			})
		}()
	}
	wg.Wait()

	for i, p := range paths {
		r := results[i]
		// The first write committed after PostgreSQL came back (the
		// trigger's clock_timestamp() of the earliest row written since).
		var first *time.Time
		if err := p.pool.QueryRow(ctx, `SELECT min(written_at) FROM `+bt+` WHERE written_at > $1`, tBack).Scan(&first); err == nil && first != nil {
			r.bbmFirstCommit = first.Sub(tBack)
		}
		_ = p.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE v_big IS DISTINCT FROM v), count(*) FILTER (WHERE writes > 1) FROM `+bt).Scan(&r.bbmLost, &r.bbmTwice)
		_ = p.pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_job_transition_logs l
			JOIN batched_background_migration_jobs j ON j.id = l.batched_background_migration_job_id
			JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
			WHERE m.table_name = $1 AND l.exception_class = 'Ferry::WorkerDied'`, bt).Scan(&r.workerDied)
		var ex []string
		if rows, err := p.pool.Query(ctx, `SELECT l.exception_class, count(*) FROM batched_background_migration_job_transition_logs l
			JOIN batched_background_migration_jobs j ON j.id = l.batched_background_migration_job_id
			JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
			WHERE m.table_name = $1 AND l.exception_class IS NOT NULL GROUP BY 1 ORDER BY 1`, bt); err == nil {
			for rows.Next() {
				var c string
				var n int
				if rows.Scan(&c, &n) == nil {
					ex = append(ex, fmt.Sprintf("%s x%d", c, n))
				}
			}
			rows.Close()
		}
		r.exceptions = strings.Join(ex, ", ")
		if o.legacy {
			var first *time.Time
			if err := p.pool.QueryRow(ctx, `SELECT min(written_at) FROM `+lt+` WHERE written_at > $1`, tBack).Scan(&first); err == nil && first != nil {
				r.legacyRerun = first.Sub(tBack)
			}
			_ = p.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE v_big IS DISTINCT FROM v), count(*) FILTER (WHERE writes > 1) FROM `+lt).Scan(&r.legacyLost, &r.legacyTwice)
			if ro, err := redis.ParseURL(redisURLs[p.name]); err == nil {
				rc := redis.NewClient(ro)
				r.legacyRetrySet, _ = rc.ZCard(ctx, "retry").Result()
				r.legacyDead, _ = rc.ZCard(ctx, "dead").Result()
				_ = rc.Close()
			}
		}
		for _, w := range workers[p.name] {
			if !w.exited() {
				r.workersAlive++
			}
			out := w.output()
			r.errorLines += strings.Count(out, `"level":"error"`)
			r.legacyRescheduled += strings.Count(out, `"msg":"migration rescheduled"`)
		}
	}
	return results, errors.Join(errs...)
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func dur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("+%.2f s", d.Seconds())
}

func (r *pgResult) print(o options) {
	fmt.Printf("postgresql stop -m %s, %s: stop took %s, no connections for %s (stop + %s down + start)\n",
		r.mode, r.path, secs(r.stopTook), secs(r.down), o.down)
	fmt.Printf("  batched: %d of %d rows copied at the stop; first commit after PostgreSQL was back: %s (target <= 10 s); finished %s (status %d)\n",
		r.bbmCopiedAtStop, o.bbmRows, dur(r.bbmFirstCommit), dur(r.bbmDone), r.bbmStatus)
	exc := r.exceptions
	if exc == "" {
		exc = "none"
	}
	fmt.Printf("  batched: rows not copied %d, written twice %d; batches taken for a dead worker's: %d; job exceptions: %s\n",
		r.bbmLost, r.bbmTwice, r.workerDied, exc)
	if o.legacy {
		fmt.Printf("  legacy CopyColumn (%d rows, one statement): re-run began %s, committed %s; rows not copied %d, written twice %d; retry set %d, dead %d; 'migration rescheduled' lines %d\n",
			o.legacyRows, dur(r.legacyRerun), dur(r.legacyDone), r.legacyLost, r.legacyTwice, r.legacyRetrySet, r.legacyDead, r.legacyRescheduled)
	}
	fmt.Printf("  workers: %d of %d still running (no restart); %d error log lines", r.workersAlive, r.workers, r.errorLines)
	if r.pgbouncer != "" {
		fmt.Printf("; %s", r.pgbouncer)
	}
	fmt.Println()
}

// pgbouncerLoginRetry sets server_login_retry (how long PgBouncer waits
// after a failed server login before it tries again; 15 s by default) in
// the private PgBouncer's ini and reloads it.
func pgbouncerLoginRetry(s *services, d time.Duration) error {
	ini := filepath.Join(filepath.Dir(s.pgbPIDFile), "pgbouncer.ini")
	b, err := os.ReadFile(ini)
	if err != nil {
		return err
	}
	line := fmt.Sprintf("server_login_retry = %d", max(1, int(d.Round(time.Second)/time.Second)))
	text := strings.Replace(string(b), "[pgbouncer]\n", "[pgbouncer]\n"+line+"\n", 1)
	if err := os.WriteFile(ini, []byte(text), 0o644); err != nil {
		return err
	}
	pid := readPID(s.pgbPIDFile)
	if pid <= 0 {
		return errors.New("no PgBouncer pid file")
	}
	return syscall.Kill(pid, syscall.SIGHUP)
}
