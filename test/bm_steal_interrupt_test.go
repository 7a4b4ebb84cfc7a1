package test

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// stealLeft counts the jobs a steal holds (private lists) and the ones
// still queued or scheduled.
func (b *bmBundle) stealLeft(t *testing.T) (held, waiting int64) {
	t.Helper()
	keys, err := b.rdb.Keys(b.ctx, "ferry:steal|*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		held += b.rdb.LLen(b.ctx, k).Val()
	}
	return held, b.rdb.LLen(b.ctx, "queue:background_migration").Val() + b.rdb.ZCard(b.ctx, "schedule").Val()
}

// Ctrl-C (or TERM) on `bm steal` stops it, and every job it took and did
// not run goes back where it came from: nothing stays stranded in its
// private list.
func TestBMStealInterruptedPutsJobsBack(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 50) // 100 jobs of two rows, 50 ms each
	p := startProc(t, "bm steal", childEnv("REDIS_URL="+b.redisURL, "DATABASE_URL="+b.dbURL), ferryBin,
		"bm", "steal", "CopyColumn", "--concurrency", "1")
	testenv.Eventually(t, 60*time.Second, "some jobs performed", func() bool { return b.copied(t) >= 10 })
	p.signal(t, syscall.SIGINT)
	if code := p.waitExit(t, 30*time.Second); code != 1 || !strings.Contains(p.out.String(), "interrupted; the jobs it took and did not run were pushed back") {
		t.Fatalf("interrupted steal: exit %d, want 1 saying so\n%s", code, p.out.String())
	}
	held, waiting := b.stealLeft(t)
	if done := int64(b.copied(t) / 2); held != 0 || done+waiting != 100 {
		t.Fatalf("after the interrupt: %d performed + %d queued or scheduled = %d, want 100; %d still held", done, waiting, done+waiting, held)
	}
}

// A steal killed with SIGKILL cannot put its jobs back. `bm remaining`
// still counts them (held by a steal), and running the steal again waits
// for the dead one's liveness to lapse, takes its jobs back and runs
// them: every row copied, none twice.
func TestBMStealAfterAKilledSteal(t *testing.T) {
	t.Parallel()
	b := bmDrainSetup(t, 50)
	p := startProc(t, "bm steal", childEnv("REDIS_URL="+b.redisURL, "DATABASE_URL="+b.dbURL), ferryBin,
		"bm", "steal", "CopyColumn", "--concurrency", "1")
	testenv.Eventually(t, 60*time.Second, "some jobs performed", func() bool { return b.copied(t) >= 10 })
	p.killGroup()
	p.waitExit(t, 10*time.Second)
	held, waiting := b.stealLeft(t)
	if held == 0 {
		t.Fatal("the killed steal held no jobs: the test did not kill it mid-way")
	}
	code, out, errs := b.ferry(t, cli.Options{}, "bm", "remaining", "--json")
	if code != 0 || !strings.Contains(out, `"remaining": `+strconv.FormatInt(held+waiting, 10)) {
		t.Fatalf("bm remaining after the kill (%d held, %d waiting): exit %d\n%s\n%s", held, waiting, code, out, errs)
	}
	code, out, errs = b.ferry(t, cli.Options{}, "bm", "steal", "CopyColumn", "--concurrency", "4")
	if code != 0 {
		t.Fatalf("second steal: exit %d\n%s\n%s", code, out, errs)
	}
	if n := b.copied(t); n != 200 {
		t.Fatalf("%d of 200 rows copied after the second steal", n)
	}
	if held, waiting := b.stealLeft(t); held+waiting != 0 {
		t.Fatalf("%d held, %d waiting after the second steal", held, waiting)
	}
	if n := b.int(t, `SELECT count(*) FROM spans WHERE what = 'start'`); n > 100+1 {
		t.Fatalf("%d UPDATEs started for 100 jobs: some ran twice", n)
	}
}
