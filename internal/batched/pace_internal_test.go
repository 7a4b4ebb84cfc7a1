package batched

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// Paced sub-batches share one clock: the first to report gets its own
// pause, the next queues behind it, and time the clock spent in the past
// is not banked. The charges are long (minutes) so the few milliseconds
// between the statements cannot blur the answer.
func TestReservePaceQueuesBatches(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)
	if err := ferryschema.Apply(ctx, pool); err != nil {
		t.Fatal(err)
	}
	const work, charge = time.Second, 100 * time.Second
	first, err := reservePace(ctx, pool, work, charge)
	if err != nil {
		t.Fatal(err)
	}
	second, err := reservePace(ctx, pool, work, charge)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first sleeps %s, second %s", first, second)
	// Alone: the charge less the work already done.
	if lo, hi := charge-work-10*time.Second, charge-work; first < lo || first > hi {
		t.Fatalf("first batch sleeps %s, want about %s", first, charge-work)
	}
	// Behind the first: one more charge.
	if d := second - first; d < charge-10*time.Second || d > charge {
		t.Fatalf("second batch sleeps %s after the first, want about %s", d, charge)
	}

	// A clock left in the past gives the next batch its own pause only.
	if _, err := pool.Exec(ctx, `UPDATE ferry_bbm_pace SET next_at = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	again, err := reservePace(ctx, pool, work, charge)
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := charge-work-10*time.Second, charge-work; again < lo || again > hi {
		t.Fatalf("after an idle hour the batch sleeps %s, want about %s", again, charge-work)
	}

	// Without the table (an engine on a schema older than version 2) the
	// error says what is missing, and the caller paces on its own.
	if _, err := pool.Exec(ctx, `DROP TABLE ferry_bbm_pace`); err != nil {
		t.Fatal(err)
	}
	if _, err := reservePace(ctx, pool, work, charge); err == nil {
		t.Fatal("no error without the pacing table")
	}
}
