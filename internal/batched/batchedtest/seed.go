// Package batchedtest fills the batched-migration tables (a fixture of their
// owner, internal/batched) and Redis with a realistic mid-upgrade state
// (migrations in every status, batches with errors, busy processes,
// retries) for the web UI.s tests, screenshots and demos.
package batchedtest

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Seeded holds the ids of the seeded migrations.
type Seeded struct {
	Active, Paused, Failed, Finished, Finalizing, OnHold int64
}

type mig struct {
	class, table, column, args string
	status                     int16
	min, max, total            int64
	batch, sub                 int
	interval                   int
	hold                       *time.Time
	holdReason                 string
}

// Seed inserts six migrations and their jobs, timed relative to now.
// The tables must exist (ferryschema.Apply).
func Seed(ctx context.Context, db *pgxpool.Pool, now time.Time) (Seeded, error) {
	var s Seeded
	holdUntil := now.Add(7 * time.Minute)
	ms := []struct {
		m   mig
		dst *int64
	}{
		{mig{"CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"], ["id_convert_to_bigint"]]`, 1, 1, 2_000_000, 2_000_000, 20_000, 1_000, 2, nil, ""}, &s.Active},
		{mig{"CopyColumnUsingBackgroundMigrationJob", "issues", "id", `[["id"], ["id_convert_to_bigint"]]`, 0, 1, 500_000, 480_000, 10_000, 1_000, 2, nil, ""}, &s.Paused},
		{mig{"BackfillProjectNamespaceId", "projects", "id", `[]`, 4, 1, 90_000, 90_000, 5_000, 500, 2, nil, ""}, &s.Failed},
		{mig{"CopyColumnUsingBackgroundMigrationJob", "notes", "id", `[["id"], ["id_convert_to_bigint"]]`, 3, 1, 40_000, 40_000, 10_000, 1_000, 2, nil, ""}, &s.Finished},
		{mig{"CopyColumnUsingBackgroundMigrationJob", "ci_builds", "id", `[["id"], ["id_convert_to_bigint"]]`, 5, 1, 300_000, 300_000, 20_000, 2_000, 2, nil, ""}, &s.Finalizing},
		{mig{"BackfillUserDetails", "users", "id", `[]`, 1, 1, 800_000, 800_000, 10_000, 1_000, 2, &holdUntil, "autovacuum running on users (wraparound prevention)"}, &s.OnHold},
	}
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, x := range ms {
			m := x.m
			started := now.Add(-30 * time.Minute)
			var finished *time.Time
			if m.status == 3 {
				f := now.Add(-10 * time.Minute)
				finished = &f
			}
			if err := tx.QueryRow(ctx, `INSERT INTO batched_background_migrations
				(job_class_name, table_name, column_name, job_arguments, status, min_value, max_value, total_tuple_count,
				 batch_size, sub_batch_size, "interval", pause_ms, max_batch_size, created_at, updated_at, started_at, finished_at, on_hold_until)
				VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, 100, 100000, $12, $12, $13, $14, $15) RETURNING id`,
				m.class, m.table, m.column, m.args, m.status, m.min, m.max, m.total, m.batch, m.sub, m.interval,
				now.Add(-2*time.Hour), started, finished, m.hold).Scan(x.dst); err != nil {
				return fmt.Errorf("seed migration: %w", err)
			}
			if m.holdReason != "" {
				// hold_reason is an engine column; set it only if present.
				_, _ = tx.Exec(ctx, `SAVEPOINT r`)
				if _, err := tx.Exec(ctx, `UPDATE batched_background_migrations SET hold_reason = $2 WHERE id = $1`, *x.dst, m.holdReason); err != nil {
					_, _ = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT r`)
				}
			}
		}
		// Active: 24 finished batches over the last 12 minutes, the
		// optimizer growing the batch size, then one running.
		if err := jobs(ctx, tx, s.Active, 1, now.Add(-12*time.Minute), 24, 30*time.Second, func(i int) (int, float64) {
			return 10_000 + i*500, 4 + float64(i%5)*0.6
		}, 3); err != nil {
			return err
		}
		if err := running(ctx, tx, s.Active, now); err != nil {
			return err
		}
		// Paused: some done.
		if err := jobs(ctx, tx, s.Paused, 1, now.Add(-40*time.Minute), 12, 40*time.Second, func(int) (int, float64) { return 10_000, 6 }, 3); err != nil {
			return err
		}
		// Failed: 8 done, 2 failed with errors.
		if err := jobs(ctx, tx, s.Failed, 1, now.Add(-20*time.Minute), 8, 30*time.Second, func(int) (int, float64) { return 5_000, 3 }, 3); err != nil {
			return err
		}
		for i, msg := range []string{
			`PG::NotNullViolation: ERROR:  null value in column "project_namespace_id" of relation "projects" violates not-null constraint`,
			`canceling statement due to statement timeout`,
		} {
			var jid int64
			lo := int64(40_001 + i*5_000)
			st := now.Add(-time.Duration(10-i) * time.Minute)
			fin := st.Add(20 * time.Second)
			if err := tx.QueryRow(ctx, `INSERT INTO batched_background_migration_jobs
				(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, attempts, started_at, finished_at, created_at, updated_at)
				VALUES ($1, $2, $3, 5000, 500, 2, 3, $4, $5, $4, $5) RETURNING id`, s.Failed, lo, lo+4_999, st, fin).Scan(&jid); err != nil {
				return fmt.Errorf("seed failed job: %w", err)
			}
			class := "ActiveRecord::NotNullViolation"
			if i == 1 {
				class = "ActiveRecord::QueryCanceled"
			}
			for a := 0; a < 3; a++ {
				at := st.Add(time.Duration(a) * 5 * time.Second)
				if _, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_job_transition_logs
					(batched_background_migration_job_id, previous_status, next_status, created_at, updated_at) VALUES ($1, 0, 1, $2, $2)`, jid, at); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_job_transition_logs
					(batched_background_migration_job_id, previous_status, next_status, exception_class, exception_message, created_at, updated_at)
					VALUES ($1, 1, 2, $2, $3, $4, $4)`, jid, class, msg, at.Add(4*time.Second)); err != nil {
					return err
				}
			}
		}
		// Finished: 4 batches cover the table.
		if err := jobs(ctx, tx, s.Finished, 1, now.Add(-50*time.Minute), 4, 30*time.Second, func(int) (int, float64) { return 10_000, 5 }, 3); err != nil {
			return err
		}
		if err := jobs(ctx, tx, s.Finalizing, 1, now.Add(-5*time.Minute), 6, 10*time.Second, func(int) (int, float64) { return 20_000, 8 }, 3); err != nil {
			return err
		}
		return jobs(ctx, tx, s.OnHold, 1, now.Add(-15*time.Minute), 10, 45*time.Second, func(int) (int, float64) { return 10_000, 5 }, 3)
	})
	return s, err
}

// jobs inserts n batches with the given status, starting at id from,
// one every step, sized and timed by shape(i) (batch size, seconds).
// Succeeded ones committed every row of their range, as the engine records.
func jobs(ctx context.Context, tx pgx.Tx, mid, from int64, start time.Time, n int, step time.Duration, shape func(int) (int, float64), status int16) error {
	lo := from
	for i := 0; i < n; i++ {
		size, secs := shape(i)
		st := start.Add(time.Duration(i) * step)
		fin := st.Add(time.Duration(secs * float64(time.Second)))
		metrics := fmt.Sprintf(`{"timings": {"update_all": [%.3f, %.3f]}}`, secs/2*0.9, secs/2*1.1)
		if _, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_jobs
			(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, attempts, started_at, finished_at, created_at, updated_at, metrics, rows_done)
			VALUES ($1, $2, $3, $4, 1000, $5, 1, $6, $7, $6, $7, $8::jsonb, CASE WHEN $5::smallint = 3 THEN $4::integer ELSE 0 END)`, mid, lo, lo+int64(size)-1, size, status, st, fin, metrics); err != nil {
			return fmt.Errorf("seed jobs: %w", err)
		}
		lo += int64(size)
	}
	return nil
}

func running(ctx context.Context, tx pgx.Tx, mid int64, now time.Time) error {
	var lo int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(max_value), 0) + 1 FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, mid).Scan(&lo); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO batched_background_migration_jobs
		(batched_background_migration_id, min_value, max_value, batch_size, sub_batch_size, status, attempts, started_at, created_at, updated_at)
		VALUES ($1, $2, $3, 20000, 1000, 1, 1, $4, $4, $4)`, mid, lo, lo+19_999, now.Add(-2*time.Second))
	return err
}

// Advance simulates a worker: the running batch of migration mid (if any)
// succeeds, n more batches of size succeed, each taking secs and ending
// by now, and a new one starts running. It stands in for the engine in
// tests that watch progress move.
func Advance(ctx context.Context, db *pgxpool.Pool, mid int64, n, size int, secs float64, now time.Time) error {
	step := time.Duration(secs * float64(time.Second))
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		start := now.Add(-time.Duration(n) * step)
		var done *time.Time
		if err := tx.QueryRow(ctx, `UPDATE batched_background_migration_jobs SET status = 3, rows_done = batch_size,
				finished_at = LEAST(started_at + $2 * interval '1 second', $3), updated_at = $3
			WHERE batched_background_migration_id = $1 AND status = 1 RETURNING finished_at`, mid, secs*0.9, now).Scan(&done); err != nil && err != pgx.ErrNoRows {
			return err
		}
		if done != nil && done.After(start) {
			start = *done
		}
		var lo int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(max_value), 0) + 1 FROM batched_background_migration_jobs WHERE batched_background_migration_id = $1`, mid).Scan(&lo); err != nil {
			return err
		}
		if err := jobs(ctx, tx, mid, lo, start, n, now.Sub(start)/time.Duration(n), func(int) (int, float64) { return size, secs * 0.9 }, 3); err != nil {
			return err
		}
		return running(ctx, tx, mid, now)
	})
}

// SeedRedis writes two live processes (one busy), queues, a retry entry,
// a dead entry, scheduled and queued legacy migrations. It returns the
// jid of the retry entry and of the dead entry.
func SeedRedis(ctx context.Context, rdb redis.UniversalClient, now time.Time) (retryJID, deadJID string, err error) {
	ts := float64(now.UnixNano()) / 1e9
	job := func(class, jid, queue string, args any, extra map[string]any) string {
		m := map[string]any{"class": class, "args": args, "jid": jid, "queue": queue, "retry": true,
			"created_at": ts - 600, "enqueued_at": ts - 42}
		for k, v := range extra {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	pipe := rdb.Pipeline()
	for i, host := range []string{"worker-1", "worker-2"} {
		id := fmt.Sprintf("%s:%d:0123456789a%d", host, 4100+i, i)
		info, _ := json.Marshal(map[string]any{"hostname": host, "started_at": ts - 3600, "pid": 4100 + i, "tag": "app",
			"concurrency": 10, "queues": []string{"background_migration", "default"}, "labels": []string{}, "identity": id, "version": "ferry dev"})
		busy := 0
		if i == 0 {
			busy = 1
			w, _ := json.Marshal(map[string]any{"queue": "background_migration",
				"payload": job("Ferry::BatchedBackgroundMigrationExecutionWorker", "b1c2d3e4f5a6b7c8d9e0f1a2", "background_migration", []any{"main", 1}, nil),
				"run_at":  now.Unix() - 3})
			pipe.HSet(ctx, id+":work", "t1", string(w))
			pipe.Expire(ctx, id+":work", time.Minute)
		}
		pipe.SAdd(ctx, "processes", id)
		pipe.HSet(ctx, id, "info", string(info), "busy", busy, "beat", fmt.Sprint(ts-2), "quiet", "false", "rss", 61234, "rtt_us", 400)
		pipe.Expire(ctx, id, time.Minute)
	}
	pipe.SAdd(ctx, "queues", "background_migration", "default")
	for i := 0; i < 3; i++ {
		pipe.LPush(ctx, "queue:background_migration", job("BackgroundMigrationWorker", fmt.Sprintf("a%023d", i), "background_migration",
			[]any{"CopyColumn", []any{"merge_requests", "id", "id_convert_to_bigint", i*1000 + 1, (i + 1) * 1000}}, nil))
	}
	pipe.LPush(ctx, "queue:default", job("Ferry::Noop", "c00000000000000000000001", "default", []any{}, nil))
	pipe.ZAdd(ctx, "schedule", redis.Z{Score: ts + 300, Member: job("BackgroundMigrationWorker", "d00000000000000000000001", "background_migration",
		[]any{"BackfillMergeRequestDiffs", []any{1, 5000}}, nil)})
	retryJID, deadJID = "e00000000000000000000001", "f00000000000000000000001"
	pipe.ZAdd(ctx, "retry", redis.Z{Score: ts + 120, Member: job("BackgroundMigrationWorker", retryJID, "background_migration",
		[]any{"CopyColumn", []any{"users", "id", "id_convert_to_bigint", 1, 1000}},
		map[string]any{"error_class": "PG::QueryCanceled", "error_message": "canceling statement due to statement timeout", "retry_count": 2, "failed_at": ts - 300})})
	pipe.ZAdd(ctx, "dead", redis.Z{Score: ts - 3600, Member: job("Ferry::Noop", deadJID, "default", []any{"x"},
		map[string]any{"error_class": "NameError", "error_message": "uninitialized constant Ferry::Nope", "retry_count": 25})})
	_, err = pipe.Exec(ctx)
	return retryJID, deadJID, err
}
