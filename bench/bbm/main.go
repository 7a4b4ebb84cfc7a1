// Command bbm benchmarks a batched background migration against the
// physical reference: a PL/pgSQL keyset loop (10k-row batches, COMMIT each,
// in a procedure) copying int to bigint on the same table, in the same run.
//
//	go run ./bench/bbm -rows 5000000   (DATABASE_URL must be set)
//
// ferry runs with default settings through the in-process engine with
// -workers goroutines (the Sidekiq round trips of `ferry worker` add well
// under 1 ms per multi-second batch).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/jobs/bbm"
	"github.com/ferrymigrate/ferry/schema"
)

func main() {
	rows := flag.Int("rows", 5_000_000, "rows to copy")
	workers := flag.Int("workers", 2, "goroutines running batches")
	parallel := flag.Int("parallel", 1, "batches of the migration at once (default settings: 1)")
	flag.Parse()
	if err := run(context.Background(), *rows, *workers, *parallel); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, rows, workers, parallel int) error {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := schema.Apply(ctx, pool); err != nil {
		return err
	}
	prepare := func(table string) error {
		for _, q := range []string{
			`DELETE FROM batched_background_migrations WHERE table_name = '` + table + `'`,
			`DROP TABLE IF EXISTS ` + table,
			`CREATE TABLE ` + table + ` (id integer PRIMARY KEY, v integer NOT NULL, v_big bigint)`,
			fmt.Sprintf(`INSERT INTO %s SELECT g, g FROM generate_series(1, %d) g`, table, rows),
			`VACUUM ANALYZE ` + table,
			`CHECKPOINT`,
		} {
			if _, err := pool.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}
	// Reference: the keyset loop inside PostgreSQL.
	if err := prepare("bench_loop"); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE OR REPLACE PROCEDURE bench_keyset_loop() LANGUAGE plpgsql AS $$
		DECLARE lo int := 0; hi int;
		BEGIN
			LOOP
				SELECT max(id) INTO hi FROM (SELECT id FROM bench_loop WHERE id > lo ORDER BY id LIMIT 10000) s;
				EXIT WHEN hi IS NULL;
				UPDATE bench_loop SET v_big = v WHERE id > lo AND id <= hi;
				COMMIT;
				lo := hi;
			END LOOP;
		END $$`); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := pool.Exec(ctx, `CALL bench_keyset_loop()`); err != nil {
		return err
	}
	loop := time.Since(t0)
	loopRate := float64(rows) / loop.Seconds()
	fmt.Printf("PL/pgSQL keyset loop: %d rows in %s = %.0f rows/s\n", rows, loop.Round(time.Millisecond), loopRate)

	if err := prepare("bench_ferry"); err != nil {
		return err
	}
	e := bbm.NewEngine(pool, bbm.Config{Logger: zap.NewNop()})
	defer e.Close()
	t0 = time.Now()
	res, err := e.Queue(ctx, bbm.QueueOptions{Class: bbm.CopyColumnClass, Table: "bench_ferry", Column: "id",
		Args: []byte(`[["v"],["v_big"]]`), MaxParallel: parallel})
	if err != nil {
		return err
	}
	if err := e.RunLocal(ctx, workers, true); err != nil {
		return err
	}
	took := time.Since(t0)
	m, err := e.Get(ctx, res.Migration.ID)
	if err != nil {
		return err
	}
	var bad int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM bench_ferry WHERE v_big IS DISTINCT FROM v`).Scan(&bad); err != nil {
		return err
	}
	var jobs int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, m.ID).Scan(&jobs)
	rate := float64(rows) / took.Seconds()
	fmt.Printf("ferry bbm (queue -> %s, default settings): %d rows in %s = %.0f rows/s (%d batches, final batch %d, rows not copied %d)\n",
		m.Status, rows, took.Round(time.Millisecond), rate, jobs, m.BatchSize, bad)
	fmt.Printf("ratio ferry/loop: %.2f (target >= 0.80)\n", rate/loopRate)
	if m.Status != bbm.Finished || bad != 0 {
		return fmt.Errorf("migration ended %s with %d rows not copied", m.Status, bad)
	}
	return nil
}
