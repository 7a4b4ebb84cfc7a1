package batched_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// SharedPace lets legacy jobs run flat out on an idle database and, while
// other sessions use it, asks for a pause after each job (the duty cycle
// of batched migrations) and moves the shared clock, so the next piece of
// paced work in any process waits its turn.
func TestSharedPace(t *testing.T) {
	t.Parallel()
	if testenv.ViaPgBouncer() {
		t.Skip("tells sessions apart by application_name; behind PgBouncer a server connection may carry another client's (README: PgBouncer)")
	}
	b := setup(t)
	ctx := testenv.Context(t)
	sp := batched.NewSharedPace(b.pool, batched.HealthConfig{})
	const work = 10 * time.Millisecond
	if pause, why, err := sp.Done(ctx, work); err != nil || pause != 0 || why != "" {
		t.Fatalf("idle: pause %s, %q, %v", pause, why, err)
	}
	defer testenv.AppLoad(ctx, b.pool, 4)()
	var pause time.Duration
	var why string
	testenv.Eventually(t, 10*time.Second, "a pause under load", func() bool {
		var err error
		if pause, why, err = sp.Done(ctx, work); err != nil {
			t.Fatal(err)
		}
		return pause > 0
	})
	// 2% of the time, or less with more sessions busy: at least 49x the work.
	if pause < 49*work/2 || !strings.Contains(why, "other sessions are using the database") {
		t.Fatalf("pause %s after %s of work, reason %q", pause, work, why)
	}
	if wait, err := sp.Wait(ctx); err != nil || wait <= 0 {
		t.Fatalf("the clock was moved past the pause, yet Wait = %s, %v", wait, err)
	}
	if batched.NewSharedPace(b.pool, batched.HealthConfig{MaxDutyUnderLoad: 1}) != nil {
		t.Fatal("pacing off (duty 1) still made a pacer")
	}
}

// DatabaseHealth holds on a long-open transaction of another session,
// with the reason batched migrations give, and clears when it ends.
func TestDatabaseHealthLongTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	check := batched.DatabaseHealth(b.pool, batched.HealthConfig{LongTransaction: 200 * time.Millisecond})
	if ok, why, err := check(ctx); err != nil || !ok {
		t.Fatalf("no transaction open: %v %q %v", ok, why, err)
	}
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	var why string
	testenv.Eventually(t, 10*time.Second, "the long transaction seen", func() bool {
		ok, w, err := check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		why = w
		return !ok
	})
	if !strings.HasPrefix(why, "long_transaction: transaction of pid") {
		t.Fatalf("reason %q", why)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, why, err := check(ctx); err != nil || !ok {
		t.Fatalf("after commit: %v %q %v", ok, why, err)
	}
}
