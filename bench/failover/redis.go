package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

const (
	recordClass = "Ferry::Bench::Record"
	benchQueue  = "failover"
	masterName  = "mymaster"
)

// redisResult is what one Redis run found.
type redisResult struct {
	fault                 string
	jobs, pushed          int
	ambiguousPushes       int // PushBulk calls that failed and were retried (their jobs may exist twice)
	pushOutage            time.Duration
	promoted              time.Duration // fault -> sentinels name the replica as master
	lost                  []int         // seqs pushed (acknowledged) that never completed
	notPushed             int
	runs, okRuns          int
	cancelledRuns         int
	ranTwice, overlapped  int
	duplicatePushes       int // seqs with more than one jid (a push retried after an error)
	stallFrom, stallUntil time.Duration
	longestGap            time.Duration
	twiceAtStop           int // second runs that started after the workers were told to stop
	workersAlive          int
	workers               int
	pidsAfter             int
	processesOnNewMaster  int64
	inflightLeft          int64
	queueLeft             int64
	pushedBackAtStop      int64
	recovered             int // "recovered jobs of dead processes" log lines
	livenessLost          int // "lost liveness in Redis" log lines
	errorLines            int
	elapsed               time.Duration
	twiceExamples         []string
	lostExamples          []string
}

func redisRun(ctx context.Context, o options, fault string) (res *redisResult, err error) {
	redis.SetLogger(quietLogger{})
	if fault != "failover" && fault != "sigkill" && fault != "sigkill-lag" {
		return nil, fmt.Errorf("unknown fault %q (want failover, sigkill or sigkill-lag)", fault)
	}
	ctx, cancel := context.WithTimeout(ctx, o.redisTimeout)
	defer cancel()
	var cl cleanups
	defer cl.run()
	dir, err := os.MkdirTemp("", "ferry-failover-redis-")
	if err != nil {
		return nil, err
	}
	if o.keepState {
		fmt.Printf("redis %s: logs in %s\n", fault, dir)
	} else {
		cl.add(func() { _ = os.RemoveAll(dir) })
	}
	bin, err := buildRecordWorker(ctx, dir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	mPort, rPort, sPorts := ports[0], ports[1], ports[2:]

	// The master and its replica: no persistence, as a cache-style Redis
	// would run; a SIGKILLed master is not restarted.
	redisServer := func(name string, port int, extra ...string) (*proc, error) {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d}, extra...)
		p, err := startProc(dir, name, nil, nil, "redis-server", args...)
		if err != nil {
			return nil, err
		}
		cl.add(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
		return p, nil
	}
	master, err := redisServer("master", mPort)
	if err != nil {
		return nil, err
	}
	replicaProc, err := redisServer("replica", rPort, "--replicaof", "127.0.0.1", strconv.Itoa(mPort))
	if err != nil {
		return nil, err
	}
	replica := redis.NewClient(&redis.Options{Addr: addr(rPort)})
	defer replica.Close()
	if err := waitFor(ctx, 30*time.Second, 100*time.Millisecond, "the replica to sync", func() (bool, error) {
		info, _ := replica.Info(ctx, "replication").Result()
		return strings.Contains(info, "master_link_status:up"), nil
	}); err != nil {
		return nil, err
	}
	var sentinelAddrs []string
	for i, port := range sPorts {
		d := filepath.Join(dir, fmt.Sprintf("sentinel%d", i+1))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		conf := filepath.Join(d, "sentinel.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
sentinel monitor %s 127.0.0.1 %d 2
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s 10000
`, port, d, masterName, mPort, masterName, o.downAfter.Milliseconds(), masterName)), 0o644); err != nil {
			return nil, err
		}
		p, err := startProc(dir, fmt.Sprintf("sentinel%d", i+1), nil, nil, "redis-server", conf, "--sentinel")
		if err != nil {
			return nil, err
		}
		cl.add(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
		sentinelAddrs = append(sentinelAddrs, addr(port))
	}
	// Every sentinel sees the replica and the two other sentinels (needed
	// for a quorum and a leader election).
	for _, a := range sentinelAddrs {
		sc := redis.NewSentinelClient(&redis.Options{Addr: a})
		err := waitFor(ctx, 40*time.Second, 200*time.Millisecond, "sentinel "+a+" to see the replica and its peers", func() (bool, error) {
			r, err := sc.Replicas(ctx, masterName).Result()
			if err != nil || len(r) != 1 || strings.Contains(r[0]["flags"], "down") {
				return false, nil
			}
			s, err := sc.Sentinels(ctx, masterName).Result()
			return err == nil && len(s) == len(sentinelAddrs)-1, nil
		})
		_ = sc.Close()
		if err != nil {
			return nil, err
		}
	}
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: masterName, SentinelAddrs: sentinelAddrs})
	defer rdb.Close()

	// Workers.
	runlog := filepath.Join(dir, "runs.log")
	var workers []*proc
	for i := range o.redisWorkers {
		p, err := startProc(dir, fmt.Sprintf("worker%d", i+1), []string{
			"REDIS_URL=redis://" + masterName + "/0", "REDIS_SENTINELS=" + strings.Join(sentinelAddrs, ","),
			"FERRY_BENCH_RUNLOG=" + runlog, "FERRY_LOG_LEVEL=info",
		}, []string{"DATABASE_URL", "DATABASE_DIRECT_URL", "REDIS_PROVIDER", "REDIS_URL", "REDIS_SENTINELS"},
			bin, "worker", "--queues", benchQueue, "--concurrency", strconv.Itoa(o.concurrency), "--timeout", "5s")
		if err != nil {
			return nil, err
		}
		cl.add(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
		workers = append(workers, p)
	}
	if err := waitFor(ctx, 30*time.Second, 100*time.Millisecond, "the workers to heartbeat", func() (bool, error) {
		for _, w := range workers {
			if w.exited() {
				return false, fmt.Errorf("%s exited: %v\n%s", w.name, w.err, w.output())
			}
		}
		n, _ := rdb.SCard(ctx, "processes").Result()
		return n == int64(len(workers)), nil
	}); err != nil {
		return nil, err
	}

	res = &redisResult{fault: fault, jobs: o.jobs, workers: len(workers)}
	began := time.Now()
	// The producer: batches of 1/50 s at -rate; a batch whose push fails
	// is pushed again (same seqs) after 100 ms until it succeeds.
	pushed := make([]bool, o.jobs)
	faultSignal := make(chan struct{})
	var prodErr error
	var firstErr, lastErr time.Time
	var wg sync.WaitGroup
	prodCtx, stopProducer := context.WithCancel(ctx)
	defer func() { stopProducer(); wg.Wait() }() // also on an early return
	wg.Add(1)
	go func() {
		ctx := prodCtx
		defer wg.Done()
		c := sidekiq.NewClient(rdb, sidekiq.WaitForReplicas(o.waitReplicas, 500*time.Millisecond))
		batch := max(1, int(o.rate/50))
		tick := time.NewTicker(time.Second * time.Duration(batch) / time.Duration(max(1, int(o.rate))))
		defer tick.Stop()
		faultAt := int(float64(o.jobs) * o.faultAt)
		signalled := false
		for lo := 0; lo < o.jobs; lo += batch {
			hi := min(lo+batch, o.jobs)
			args := make([]json.RawMessage, 0, hi-lo)
			for s := lo; s < hi; s++ {
				args = append(args, json.RawMessage(fmt.Sprintf("[%d,%d]", s, o.jobMs)))
			}
			for {
				// A push that waits for replicas rides out the failover
				// inside PushBulk; give it the time.
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second+time.Duration(o.waitReplicas)*25*time.Second)
				_, err := c.PushBulk(pctx, recordClass, args, sidekiq.PushOptions{Queue: benchQueue})
				pcancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					prodErr = ctx.Err()
					return
				}
				res.ambiguousPushes++
				if firstErr.IsZero() {
					firstErr = time.Now()
				}
				lastErr = time.Now()
				_ = sleep(ctx, 100*time.Millisecond)
			}
			for s := lo; s < hi; s++ {
				pushed[s] = true
			}
			if !signalled && hi >= faultAt {
				signalled = true
				close(faultSignal)
			}
			select {
			case <-ctx.Done():
				prodErr = ctx.Err()
				return
			case <-tick.C:
			}
		}
	}()
	select {
	case <-faultSignal:
	case <-ctx.Done():
		wg.Wait()
		return nil, fmt.Errorf("before the fault: %w", prodErr)
	}

	// The fault.
	t0 := time.Now()
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinelAddrs[0]})
	defer sc.Close()
	switch fault {
	case "failover":
		if err := sc.Failover(ctx, masterName).Err(); err != nil {
			return nil, fmt.Errorf("SENTINEL FAILOVER: %w", err)
		}
	case "sigkill":
		if err := master.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return nil, err
		}
	case "sigkill-lag":
		// A replica that misses the master's last -lag of writes (stopped,
		// as a lagging or partitioned replica would be), then the master
		// dies: what asynchronous replication can lose.
		if err := replicaProc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			return nil, err
		}
		cl.add(func() { _ = replicaProc.cmd.Process.Signal(syscall.SIGCONT) })
		// The master drops the link; what it sent before stays in the
		// stopped replica's socket buffer, what it writes after does not.
		mc := redis.NewClient(&redis.Options{Addr: addr(mPort)})
		err := mc.ClientKillByFilter(ctx, "TYPE", "replica").Err()
		_ = mc.Close()
		if err != nil {
			return nil, fmt.Errorf("CLIENT KILL TYPE replica: %w", err)
		}
		if err := sleep(ctx, o.lag); err != nil {
			return nil, err
		}
		if err := master.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return nil, err
		}
		if err := replicaProc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			return nil, err
		}
	}
	if err := waitFor(ctx, 60*time.Second, 20*time.Millisecond, "the sentinels to promote the replica", func() (bool, error) {
		a, err := sc.GetMasterAddrByName(ctx, masterName).Result()
		return err == nil && len(a) == 2 && a[1] == strconv.Itoa(rPort), nil
	}); err != nil {
		return nil, err
	}
	res.promoted = time.Since(t0)
	wg.Wait()
	prodDone := time.Now()
	if prodErr != nil {
		return nil, fmt.Errorf("producer: %w", prodErr)
	}
	if !firstErr.IsZero() {
		res.pushOutage = lastErr.Sub(firstErr) + 100*time.Millisecond
	}
	for _, p := range pushed {
		if p {
			res.pushed++
		}
	}

	// Wait until every pushed job has completed, or nothing completes for
	// -settle (jobs that will never run).
	var runs map[string][]run
	lastOK, lastChange := -1, time.Now()
	for {
		runs, err = readRuns(runlog)
		if err != nil {
			return nil, err
		}
		done := doneSeqs(runs)
		missing := 0
		for s, p := range pushed {
			if p && !done[s] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if len(done) != lastOK {
			lastOK, lastChange = len(done), time.Now()
		}
		if time.Since(lastChange) > o.redisSettle {
			break
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return nil, fmt.Errorf("waiting for the jobs to complete: %w", err)
		}
	}
	res.elapsed = time.Since(began)

	// What the new master holds, then stop the workers (TERM: they push
	// unfinished in-flight jobs back) and count what they pushed back.
	nm := redis.NewClient(&redis.Options{Addr: addr(rPort)})
	defer nm.Close()
	res.processesOnNewMaster, _ = nm.SCard(ctx, "processes").Result()
	res.queueLeft, _ = nm.LLen(ctx, "queue:"+benchQueue).Result()
	keys, _ := nm.Keys(ctx, "ferry:inflight|*").Result()
	for _, k := range keys {
		n, _ := nm.LLen(ctx, k).Result()
		res.inflightLeft += n
	}
	for _, w := range workers {
		if !w.exited() {
			res.workersAlive++
		}
	}
	pidsAfter := map[int]bool{}
	for _, rs := range runs {
		for _, r := range rs {
			if r.start.After(t0.Add(res.promoted)) {
				pidsAfter[r.pid] = true
			}
		}
	}
	res.pidsAfter = len(pidsAfter)
	stopAt := time.Now()
	for _, w := range workers {
		w.stop(syscall.SIGTERM, 10*time.Second)
	}
	if n, err := nm.LLen(ctx, "queue:"+benchQueue).Result(); err == nil {
		res.pushedBackAtStop = n - res.queueLeft
	}
	for _, w := range workers {
		out := w.output()
		res.recovered += strings.Count(out, "recovered jobs of dead processes")
		res.livenessLost += strings.Count(out, "lost liveness in Redis")
		res.errorLines += strings.Count(out, `"level":"error"`)
	}
	runs, err = readRuns(runlog)
	if err != nil {
		return nil, err
	}
	res.analyze(runs, pushed, t0, prodDone, stopAt)
	return res, nil
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// buildRecordWorker builds ./recordworker (ferry's CLI plus the job class)
// into dir.
func buildRecordWorker(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "recordworker")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/ferrymigrate/ferry/bench/failover/recordworker")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build recordworker: %v\n%s", err, out)
	}
	return bin, nil
}

// run is one execution of a job, from the run log.
type run struct {
	seq        int
	jid        string
	pid        int
	start, end time.Time // end zero: no end line (killed)
	outcome    string
}

func readRuns(path string) (map[string][]run, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return map[string][]run{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	runs := map[string][]run{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue // a line being written
		}
		seq, _ := strconv.Atoi(fs[1])
		pid, _ := strconv.Atoi(fs[3])
		ns, _ := strconv.ParseInt(fs[4], 10, 64)
		jid, at := fs[2], time.Unix(0, ns)
		switch fs[0] {
		case "start":
			runs[jid] = append(runs[jid], run{seq: seq, jid: jid, pid: pid, start: at})
		case "end":
			rs := runs[jid]
			// The latest open run of this jid on this pid.
			for i := len(rs) - 1; i >= 0; i-- {
				if rs[i].pid == pid && rs[i].end.IsZero() {
					rs[i].end = at
					if len(fs) > 5 {
						rs[i].outcome = fs[5]
					}
					break
				}
			}
		}
	}
	return runs, sc.Err()
}

func doneSeqs(runs map[string][]run) map[int]bool {
	done := map[int]bool{}
	for _, rs := range runs {
		for _, r := range rs {
			if r.outcome == "ok" {
				done[r.seq] = true
			}
		}
	}
	return done
}

func (res *redisResult) analyze(runs map[string][]run, pushed []bool, t0, prodDone, stopAt time.Time) {
	done := doneSeqs(runs)
	for s, p := range pushed {
		switch {
		case !p:
			res.notPushed++
		case !done[s]:
			res.lost = append(res.lost, s)
		}
	}
	jidsOfSeq := map[int]map[string]bool{}
	var starts []time.Time
	for jid, rs := range runs {
		for _, r := range rs {
			res.runs++
			switch r.outcome {
			case "ok":
				res.okRuns++
			case "cancelled":
				res.cancelledRuns++
			}
			starts = append(starts, r.start)
			if jidsOfSeq[r.seq] == nil {
				jidsOfSeq[r.seq] = map[string]bool{}
			}
			jidsOfSeq[r.seq][jid] = true
		}
		if len(rs) > 1 {
			res.ranTwice++
			if rs[len(rs)-1].start.After(stopAt) {
				res.twiceAtStop++
			}
			over := false
			for i := range rs {
				for j := i + 1; j < len(rs); j++ {
					if overlaps(rs[i], rs[j]) {
						over = true
					}
				}
			}
			if over {
				res.overlapped++
			}
			if len(res.twiceExamples) < 5 {
				var b strings.Builder
				fmt.Fprintf(&b, "jid %s (seq %d):", jid, rs[0].seq)
				for _, r := range rs {
					end := "no end"
					if !r.end.IsZero() {
						end = fmt.Sprintf("%+.3fs %s", r.end.Sub(t0).Seconds(), r.outcome)
					}
					fmt.Fprintf(&b, " [pid %d %+.3fs .. %s]", r.pid, r.start.Sub(t0).Seconds(), end)
				}
				res.twiceExamples = append(res.twiceExamples, b.String())
			}
		}
	}
	for _, js := range jidsOfSeq {
		if len(js) > 1 {
			res.duplicatePushes++
		}
	}
	for i, s := range res.lost {
		if i == 5 {
			break
		}
		res.lostExamples = append(res.lostExamples, strconv.Itoa(s))
	}
	// The longest pause in job starts that ends after the fault, while
	// jobs were still being pushed: jobs flow again at its end.
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(starts); i++ {
		if starts[i].Before(t0) || starts[i].After(prodDone) {
			continue
		}
		if g := starts[i].Sub(starts[i-1]); g > res.longestGap {
			res.longestGap = g
			res.stallFrom, res.stallUntil = starts[i-1].Sub(t0), starts[i].Sub(t0)
		}
	}
}

func overlaps(a, b run) bool {
	aEnd, bEnd := a.end, b.end
	if aEnd.IsZero() {
		aEnd = time.Unix(1<<40, 0)
	}
	if bEnd.IsZero() {
		bEnd = time.Unix(1<<40, 0)
	}
	return a.start.Before(bEnd) && b.start.Before(aEnd)
}

func (res *redisResult) print() {
	name := map[string]string{"failover": "SENTINEL FAILOVER", "sigkill": "SIGKILL of the master",
		"sigkill-lag": "SIGKILL of the master, replica missing its last writes"}[res.fault]
	fmt.Printf("redis, %s: %d jobs pushed (%d not), %d runs (%d ok, %d cancelled) in %s\n",
		name, res.pushed, res.notPushed, res.runs, res.okRuns, res.cancelledRuns, secs(res.elapsed))
	fmt.Printf("  replica promoted %s after the fault; pushes failed for %s (%d batches pushed again)\n",
		secs(res.promoted), secs(res.pushOutage), res.ambiguousPushes)
	fmt.Printf("  lost (pushed, never completed): %d; run twice (same jid): %d (%d of them only when the workers stopped), overlapping: %d; seqs pushed twice after a failed push: %d\n",
		len(res.lost), res.ranTwice, res.twiceAtStop, res.overlapped, res.duplicatePushes)
	fmt.Printf("  jobs flow again: no job started from %+.2f s to %+.2f s after the fault (longest pause while pushing: %s)\n",
		res.stallFrom.Seconds(), res.stallUntil.Seconds(), secs(res.longestGap))
	fmt.Printf("  workers: %d of %d still running, %d ran jobs after the promotion; %d in 'processes' on the new master\n",
		res.workersAlive, res.workers, res.pidsAfter, res.processesOnNewMaster)
	fmt.Printf("  orphan recovery: %d 'recovered jobs of dead processes', %d 'lost liveness' log lines; %d error lines\n",
		res.recovered, res.livenessLost, res.errorLines)
	fmt.Printf("  left on the new master: %d queued, %d in private lists; pushed back when the workers stopped: %d\n",
		res.queueLeft, res.inflightLeft, res.pushedBackAtStop)
	if len(res.lost) > 0 {
		fmt.Printf("  lost seqs, first: %s\n", strings.Join(res.lostExamples, ", "))
	}
	for _, e := range res.twiceExamples {
		fmt.Printf("  twice: %s\n", e)
	}
}

// quietLogger drops go-redis's own log lines (sentinel master switches),
// which the figures report anyway.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
