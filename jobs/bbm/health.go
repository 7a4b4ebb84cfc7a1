package bbm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// HealthConfig sets the database signals that throttle migrations. They
// replace GitLab's fixed sleeps and two-minute intervals: a migration runs
// flat out until the database says otherwise.
type HealthConfig struct {
	// Disabled turns every check off.
	Disabled bool
	// MaxReplicationLagBytes holds migrations while a standby is further
	// behind than this (default 100 MB, GitLab's legacy limit).
	MaxReplicationLagBytes int64
	// MaxReplayLag holds migrations while a standby replays later than
	// this (default 30s).
	MaxReplayLag time.Duration
	// LongTransaction holds migrations while another transaction has been
	// open this long: it keeps vacuum from cleaning up what we rewrite
	// (default 10m).
	LongTransaction time.Duration
	// Interval between checks of one migration per engine (default 1s).
	Interval time.Duration
	// MaxHold caps the exponential back-off of repeated holds (default 60s).
	MaxHold time.Duration
}

func (h HealthConfig) withDefaults() HealthConfig {
	if h.MaxReplicationLagBytes == 0 {
		h.MaxReplicationLagBytes = 100 << 20
	}
	if h.MaxReplayLag == 0 {
		h.MaxReplayLag = 30 * time.Second
	}
	if h.LongTransaction == 0 {
		h.LongTransaction = 10 * time.Minute
	}
	if h.Interval == 0 {
		h.Interval = time.Second
	}
	if h.MaxHold == 0 {
		h.MaxHold = time.Minute
	}
	return h
}

// Signal is one health indicator's verdict.
type Signal struct {
	Indicator string `json:"indicator"`
	// Stop puts the migration on hold; otherwise it is slowed to one
	// batch at a time.
	Stop   bool   `json:"stop"`
	Reason string `json:"reason"`
}

// Evaluate runs the health indicators for migration m on table t.
// Indicators that cannot run (e.g. missing privileges) are skipped.
func (e *Engine) Evaluate(ctx context.Context, m *Migration, tableOID uint32) []Signal {
	if e.health.Disabled {
		return nil
	}
	var out []Signal
	h := e.health
	// Autovacuum on our table: a wraparound vacuum must not be fought;
	// an ordinary one is only slowed down to, since it is cleaning up
	// after us and holding off entirely would just stretch the migration.
	var wrap *bool
	if err := e.pool.QueryRow(ctx, `
		SELECT bool_or(a.query LIKE '%to prevent wraparound%')
		FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a ON a.pid = p.pid
		WHERE p.relid = $1 AND a.backend_type = 'autovacuum worker'`, tableOID).Scan(&wrap); err == nil && wrap != nil {
		out = append(out, Signal{Indicator: "autovacuum", Stop: *wrap, Reason: "autovacuum is running on " + m.Table + map[bool]string{true: " (to prevent wraparound)", false: ""}[*wrap]})
	}
	var lagBytes, replay float64
	if err := e.pool.QueryRow(ctx, `
		SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8,
		       coalesce(max(extract(epoch FROM replay_lag)), 0)::float8
		FROM pg_stat_replication`).Scan(&lagBytes, &replay); err == nil {
		if int64(lagBytes) > h.MaxReplicationLagBytes || replay > h.MaxReplayLag.Seconds() {
			out = append(out, Signal{Indicator: "replication_lag", Stop: true,
				Reason: fmt.Sprintf("replication lag %d MB, replay lag %.1fs", int64(lagBytes)>>20, replay)})
		}
	}
	app := appNamePrefix + strconv.FormatInt(m.ID, 10)
	var blocked, waiting int
	if err := e.pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE w.application_name <> $1),
		       count(*) FILTER (WHERE w.application_name = $1)
		FROM pg_stat_activity w
		WHERE w.datname = current_database() AND w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
		  AND (w.application_name = $1 OR EXISTS (
		        SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid)) AND b.application_name = $1))`,
		app).Scan(&blocked, &waiting); err == nil && blocked+waiting > 0 {
		out = append(out, Signal{Indicator: "lock_waits", Stop: true,
			Reason: fmt.Sprintf("%d session(s) wait on our locks, we wait on %d", blocked, waiting)})
	}
	var pid int
	var age float64
	var state string
	if err := e.pool.QueryRow(ctx, `
		SELECT pid, extract(epoch FROM now() - xact_start)::float8, coalesce(state, '')
		FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
		  AND xact_start < now() - make_interval(secs => $1) AND application_name NOT LIKE 'ferry-bbm:%'
		ORDER BY xact_start LIMIT 1`, h.LongTransaction.Seconds()).Scan(&pid, &age, &state); err == nil {
		out = append(out, Signal{Indicator: "long_transaction", Stop: true,
			Reason: fmt.Sprintf("transaction of pid %d open for %s (%s)", pid, time.Duration(age*float64(time.Second)).Round(time.Millisecond), state)})
	}
	return out
}

// maybeCheckHealth evaluates m at most once per Interval per engine and
// applies the verdict.
func (e *Engine) maybeCheckHealth(ctx context.Context, m *Migration, t *Target) {
	if e.health.Disabled || ctx.Err() != nil {
		return
	}
	e.mu.Lock()
	last := e.lastHealth[m.ID]
	due := time.Since(last) >= e.health.Interval
	if due {
		e.lastHealth[m.ID] = time.Now()
	}
	e.mu.Unlock()
	if !due {
		return
	}
	e.applyHealth(ctx, m, e.Evaluate(ctx, m, t.OID))
}

// applyHealth holds (stop) or slows the migration with a logged reason,
// backing off exponentially while the signal persists, or clears it.
func (e *Engine) applyHealth(ctx context.Context, m *Migration, sigs []Signal) {
	var stop, slow []string
	for _, s := range sigs {
		if s.Stop {
			stop = append(stop, s.Indicator+": "+s.Reason)
		} else {
			slow = append(slow, s.Indicator+": "+s.Reason)
		}
	}
	var err error
	switch {
	case len(stop) > 0:
		reason := strings.Join(append(stop, slow...), "; ")
		var until time.Time
		err = e.pool.QueryRow(ctx, `UPDATE batched_background_migrations
			SET on_hold_until = now() + least(make_interval(secs => power(2, least(hold_count, 10))), make_interval(secs => $3)),
			    hold_reason = $2, hold_count = hold_count + 1
			WHERE id = $1 RETURNING on_hold_until`, m.ID, truncate(reason, 1000), e.health.MaxHold.Seconds()).Scan(&until)
		e.log.Info(fmt.Sprintf("BatchedMigration[id: %d] put on hold until %s", m.ID, until.Format(time.RFC3339)),
			zap.Int64("migration_id", m.ID), zap.String("reason", reason), zap.Float64("duration_s", time.Until(until).Seconds()))
	case len(slow) > 0:
		reason := strings.Join(slow, "; ")
		_, err = e.pool.Exec(ctx, `UPDATE batched_background_migrations SET slow_until = now() + interval '10 seconds', hold_reason = $2
			WHERE id = $1`, m.ID, truncate(reason, 1000))
		e.log.Info("batched background migration slowed to one batch at a time", zap.Int64("migration_id", m.ID), zap.String("reason", reason))
	default:
		_, err = e.pool.Exec(ctx, `UPDATE batched_background_migrations SET hold_count = 0, hold_reason = NULL
			WHERE id = $1 AND (hold_count <> 0 OR hold_reason IS NOT NULL) AND coalesce(on_hold_until, '-infinity') < now()
			  AND coalesce(slow_until, '-infinity') < now()`, m.ID)
	}
	if err != nil && ctx.Err() == nil {
		e.log.Warn("could not record health verdict", zap.Int64("migration_id", m.ID), zap.Error(err))
	}
}
