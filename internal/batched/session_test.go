package batched_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// One engine claims a batch, the batch is rescued and claimed again by the
// same engine (same session number) while the first goroutine is still
// inside it: the first claim can no longer write anything, the second runs
// the batch, and every row is written once.
func TestClaimTokenFencesAnEarlierClaimOfTheSameEngine(t *testing.T) {
	t.Parallel()
	b, e, id, first := oneClaimedBatch(t, "fenced", 3000, 500)
	ctx := testenv.Context(t)
	// What a rescue does (a lost session taken for a dead one).
	if _, err := b.pool.Exec(ctx, `UPDATE batched_background_migration_jobs SET status = 2 WHERE status = 1`); err != nil {
		t.Fatal(err)
	}
	second, err := batched.ClaimBatch(ctx, e, id)
	if err != nil || second == nil {
		t.Fatalf("second claim: %v %v", second, err)
	}
	if err := batched.WriteSubBatch(ctx, e, first, 500); !errors.Is(err, batched.ErrLostOwnership) {
		t.Fatalf("a write of the earlier claim: %v, want lost ownership", err)
	}
	var touched int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM fenced WHERE n > 0`).Scan(&touched); err != nil || touched != 0 {
		t.Fatalf("the earlier claim wrote %d rows (%v)", touched, err)
	}
	batched.RunClaim(ctx, e, second)
	batched.RunClaim(ctx, e, first) // records nothing: the batch is not its own
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, id); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	b.checkExactlyOnce(t, "fenced")
}

// Every backend of an engine is terminated mid-batch (what a PostgreSQL
// restart or a pooler does to a live process): its batch waits for a new
// connection and goes on from its last committed sub-batch; the other,
// settled engine does not take the live one for dead.
func TestLostConnectionsAreNotADeath(t *testing.T) {
	t.Parallel()
	if testenv.ViaPgBouncer() {
		t.Skip("terminates one engine's backends by name; behind PgBouncer a server connection may carry another client's name")
	}
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, "cut", 20000)
	if _, err := b.pool.Exec(ctx, `CREATE FUNCTION slowish() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id % 500 = 0 THEN PERFORM pg_sleep(0.01); END IF; RETURN NEW; END $$;
		CREATE TRIGGER slowish BEFORE UPDATE ON cut FOR EACH ROW EXECUTE FUNCTION slowish()`); err != nil {
		t.Fatal(err)
	}
	cutURL := b.url + sepFor(b.url) + "application_name=ferry-cut"
	cut := (&bundle{url: cutURL, pool: b.pool, reg: b.reg}).engine(t, batched.Config{})
	other := b.engine(t, batched.Config{})
	res, err := cut.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "cut", Column: "id", BatchSize: 20000, SubBatchSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the other engine settled", func() bool { return batched.Settled(other) })
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		if _, err := cut.RunBatch(ctx, res.Migration.ID); err != nil {
			t.Error(err)
		}
	}()
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	otherDone := make(chan error, 1)
	go func() { otherDone <- other.RunLocal(octx, 1, false) }()
	cursor := func() int64 {
		var c *int64
		_ = b.pool.QueryRow(ctx, `SELECT cursor_value FROM batched_background_migration_jobs WHERE status = 1`).Scan(&c)
		if c == nil {
			return 0
		}
		return *c
	}
	testenv.Eventually(t, 30*time.Second, "mid-batch", func() bool { return cursor() > 3000 })
	// The session connection and the batch's (renamed ferry-bbm:<id>;
	// only the cut engine runs a batch).
	if _, err := b.direct(t).Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'ferry-cut' OR application_name LIKE 'ferry-bbm:%'`); err != nil {
		t.Fatal(err)
	}
	<-ran
	testenv.Eventually(t, 30*time.Second, "finished", func() bool { return b.status(t, res.Migration.ID) == batched.Finished })
	ocancel()
	if err := <-otherDone; err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "cut")
	var died, attempts int
	if err := b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM batched_background_migration_job_transition_logs WHERE exception_class IS NOT NULL),
		(SELECT max(attempts) FROM batched_background_migration_jobs)`).Scan(&died, &attempts); err != nil {
		t.Fatal(err)
	}
	if died != 0 || attempts != 1 {
		t.Fatalf("%d failed transitions, %d attempts: a live engine's batch was taken for a dead one's", died, attempts)
	}
}

// Closing an engine right after it started (a worker stopped at once)
// neither panics nor leaves its session row behind.
func TestEngineCloseRightAfterStart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	for range 20 {
		e := b.engine(t, batched.Config{})
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		e.Close()
	}
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM ferry_bbm_sessions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d session rows left (%v)", n, err)
	}
}

// A sub-batch whose COMMIT reply was lost may have committed after all:
// the claim then runs the next sub-batch still believing the old cursor.
// The write checks the cursor it expects, so the range is not written
// twice; the claim reads the row's cursor and goes on from there.
func TestSubBatchChecksTheCursorItExpects(t *testing.T) {
	t.Parallel()
	b, e, _, cl := oneClaimedBatch(t, "cas", 1000, 100)
	ctx := testenv.Context(t)
	if err := batched.WriteSubBatchAt(ctx, e, cl, 100, nil); err != nil {
		t.Fatal(err)
	}
	// The same sub-batch again, as after a reply that never came.
	if err := batched.WriteSubBatchAt(ctx, e, cl, 100, nil); !errors.Is(err, batched.ErrCursorMoved) {
		t.Fatalf("a repeat of a committed sub-batch: %v, want the cursor-moved error", err)
	}
	var twice, done int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE n > 1), count(*) FILTER (WHERE n = 1) FROM cas`).Scan(&twice, &done); err != nil {
		t.Fatal(err)
	}
	if twice != 0 || done != 100 {
		t.Fatalf("%d rows written twice, %d once; want 0 and 100", twice, done)
	}
	batched.RunClaim(ctx, e, cl) // goes on from the row's cursor
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	b.checkExactlyOnce(t, "cas")
}

// oneClaimedBatch queues a migration of a rows-row table in one batch of
// sub-row sub-batches on a started engine and claims that batch.
func oneClaimedBatch(t *testing.T, table string, rows, sub int) (*bundle, *batched.Engine, int64, *batched.Claim) {
	t.Helper()
	b := setup(t)
	ctx := testenv.Context(t)
	b.table(t, table, rows)
	e := b.engine(t, batched.Config{})
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: table, Column: "id", BatchSize: rows, SubBatchSize: sub})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := batched.ClaimBatch(ctx, e, res.Migration.ID)
	if err != nil || cl == nil {
		t.Fatalf("claim: %v %v", cl, err)
	}
	return b, e, res.Migration.ID, cl
}

// Commits a batch was told of can vanish (synchronous_commit off and a
// crash, or a failover to an asynchronous standby): recording its success
// then finds the job's cursor behind what the batch saw, hands the job back
// instead of marking rows done that are not, and the next claim resumes
// from the kept cursor, every row copied exactly once.
func TestLostCommitsAreResumedNotSkipped(t *testing.T) {
	t.Parallel()
	b, e, id, cl := oneClaimedBatch(t, "lostcommits", 3000, 500)
	ctx := testenv.Context(t)
	if err := batched.WriteSubBatch(ctx, e, cl, 500); err != nil {
		t.Fatal(err)
	}
	// The batch believes it went to the end; the database kept one sub-batch.
	if err := batched.RecordSuccess(ctx, e, cl, 1<<40, 3000); !errors.Is(err, batched.ErrCommitsLost) {
		t.Fatalf("recording: %v", err)
	}
	var status int
	if err := b.pool.QueryRow(ctx, `SELECT status FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, id).Scan(&status); err != nil || status != 2 {
		t.Fatalf("job status %d, %v; want 2 (failed, to be resumed)", status, err)
	}
	if err := e.RunLocal(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if s := b.status(t, id); s != batched.Finished {
		t.Fatalf("status %s", s)
	}
	b.checkExactlyOnce(t, "lostcommits")
}
