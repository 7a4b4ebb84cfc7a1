package batched_test

import (
	"math"
	"testing"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

// The chart's rate of a retried batch is its last attempt's: rows_done
// counts every attempt's rows, started_at is the last one's.
func TestChartRateOfARetriedBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testenv.Context(t)
	e := b.engine(t, batched.Config{})
	b.table(t, "charted", 100)
	res, err := e.Queue(ctx, batched.QueueOptions{Class: "CountAndCopy", Table: "charted", Column: "id"})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Migration.ID
	// Retried (10,000 rows over two attempts, 226 in the last, which took
	// 2 s), and one of GitLab's without ferry's metrics.
	if _, err := b.pool.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, started_at, finished_at, rows_done, metrics)
		VALUES ($1, 1, 10000, 10000, 1000, 3, now() - interval '10 s', now() - interval '8 s', 10000, '{"rows": 226}'),
		       ($1, 10001, 20000, 10000, 1000, 3, now() - interval '4 s', now(), 10000, '{}')`, id); err != nil {
		t.Fatal(err)
	}
	pts, err := e.Chart(ctx, id, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 2 || math.Abs(pts[0].RowsPerSec-113) > 1 || math.Abs(pts[1].RowsPerSec-2500) > 1 {
		t.Fatalf("chart %+v; want 113 rows/s (the last attempt's 226 in 2 s), then 2500", pts)
	}
}
