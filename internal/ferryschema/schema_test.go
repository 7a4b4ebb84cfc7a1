package ferryschema_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestApplyConcurrentIdempotent(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)
	var g errgroup.Group
	for range 4 {
		g.Go(func() error { return ferryschema.Apply(ctx, pool) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := ferryschema.Apply(ctx, pool); err != nil {
		t.Fatal(err)
	}
	v, err := ferryschema.Current(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if want := ferryschema.Versions()[len(ferryschema.Versions())-1].ID; v != want {
		t.Fatalf("version %d, want %d", v, want)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM ferry_schema_versions`).Scan(&n); err != nil || n != len(ferryschema.Versions()) {
		t.Fatalf("versions recorded: %d (%v)", n, err)
	}
	var maxRunning int
	if err := pool.QueryRow(ctx, `SELECT max_running FROM ferry_bbm_settings`).Scan(&maxRunning); err != nil || maxRunning != 2 {
		t.Fatalf("max_running %d (%v)", maxRunning, err)
	}
	// GitLab's documented queries work unchanged.
	for _, q := range []string{
		`SELECT job_class_name, table_name, column_name, job_arguments FROM batched_background_migrations WHERE status NOT IN (3, 6)`,
		`SELECT started_at, finished_at, finished_at - started_at AS duration, min_value, max_value, batch_size, sub_batch_size FROM batched_background_migration_jobs WHERE batched_background_migration_id = 1 ORDER BY id DESC LIMIT 10`,
		`SELECT id, class_name, arguments, status, created_at, updated_at FROM background_migration_jobs`,
	} {
		rows, err := pool.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		rows.Close()
	}
}

// A database whose ferry tables a newer ferry set up (or restored from
// its backup): Apply refuses, naming the version, and changes nothing
// (not even a step it seems to miss).
func TestApplyRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)
	if err := ferryschema.Apply(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ferry_schema_versions (version, name) VALUES (99, 'from the future');
		DELETE FROM ferry_schema_versions WHERE version = 2;
		DROP TABLE ferry_bbm_pace`); err != nil {
		t.Fatal(err)
	}
	err := ferryschema.Apply(ctx, pool)
	if !errors.Is(err, ferryschema.ErrNewerSchema) || !errors.Is(err, ferryschema.ErrApply) || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("Apply on ferry schema 99: %v", err)
	}
	var pace bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('ferry_bbm_pace') IS NOT NULL`).Scan(&pace); err != nil || pace {
		t.Fatalf("Apply on ferry schema 99 recreated a table: %v, %v", pace, err)
	}
}

func ExampleVersions() {
	for _, v := range ferryschema.Versions() {
		fmt.Println(v.ID, v.Name)
	}
	// Output:
	// 1 batched background migrations
	// 2 shared pacing clock, finalizer session
	// 3 engine session heartbeats, claim tokens
	// 4 web UI action audit
	// 5 legacy tracking rows marked by an operator
}
