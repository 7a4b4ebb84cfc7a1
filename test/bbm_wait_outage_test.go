package test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/cli"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// `bbm wait` waits out a database restart, as the workers do, instead of
// exiting 1 (its answer for a failed migration) on the first poll that
// cannot connect; a database it never reached is a setting to fix: exit
// at once.
func TestBBMWaitThroughADatabaseRestart(t *testing.T) {
	t.Parallel()
	e := newDBEnv(t)
	if err := ferryschema.Apply(e.ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `INSERT INTO batched_background_migrations
		(job_class_name, table_name, column_name, job_arguments, status, batch_size, sub_batch_size)
		VALUES ('CopyColumnUsingBackgroundMigrationJob', 'events', 'id', '[]', 0, 1000, 100)`); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	px := startProxy(t, u.Host)
	u.Host = px.addr()
	var out, errs lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(e.ctx, []string{"bbm", "wait", "--interval", "100ms", "--database-url", u.String(), "--log-level", "error"},
			&out, &errs, cli.Options{})
	}()
	testenv.Eventually(t, 10*time.Second, "wait polling", func() bool { return strings.Contains(out.String(), "Still waiting on 1") })
	px.down()
	testenv.Eventually(t, 10*time.Second, "wait saying it waits for the database", func() bool {
		return strings.Contains(errs.String(), "ferry: still waiting: ")
	})
	select {
	case code := <-done:
		t.Fatalf("wait exited %d while the database was down\n%s\n%s", code, out.String(), errs.String())
	default:
	}
	px.up()
	testenv.Eventually(t, 10*time.Second, "wait seeing the database again", func() bool {
		return strings.Contains(errs.String(), "ferry: the database answers again after ")
	})
	if _, err := e.pool.Exec(e.ctx, `UPDATE batched_background_migrations SET status = 3`); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(out.String(), "All batched background migrations have finished.") {
			t.Fatalf("wait: exit %d\n%s\n%s", code, out.String(), errs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not end after the migration finished")
	}

	// Never reached: exit at once.
	px.down()
	var o2, e2 lockedBuffer
	code := cli.Main(e.ctx, []string{"bbm", "wait", "--interval", "100ms", "--database-url", u.String(), "--log-level", "error"}, &o2, &e2, cli.Options{})
	if code == 0 || !strings.Contains(e2.String(), "cannot reach PostgreSQL") {
		t.Fatalf("wait on a database it never reached: exit %d\n%s", code, e2.String())
	}
}
