package batched

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/pgwal"
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
	// MaxPendingWAL holds migrations while more WAL segments than this
	// wait for archival (default 42, GitLab's WriteAheadLog indicator).
	MaxPendingWAL int64
	// LongTransaction holds migrations while another transaction has been
	// open this long: it keeps vacuum from cleaning up what we rewrite
	// (default 10m).
	LongTransaction time.Duration
	// LockTimeout is how long a sub-batch statement waits for a lock held
	// by another session before it gives up (lock_timeout) and the
	// migration goes on hold (default 500ms). While it waits it keeps the
	// rows it already updated locked, so others queue behind it; giving up
	// quickly lets them through.
	LockTimeout time.Duration
	// Interval between checks of one migration per engine (default 1s).
	Interval time.Duration
	// MaxHold caps the exponential back-off of repeated holds (default 60s).
	MaxHold time.Duration
	// MaxDutyUnderLoad is the share of time a batch spends in sub-batch
	// statements while other sessions are busy in the database (the
	// contention signal, see contention.go); it sleeps the rest. The
	// closed loop (MaxLatencyImpact) starts from it, may raise it up to
	// 7% and never goes below it (nor above 7%: a larger value is only
	// where it starts).
	// It applies to about one busy session and falls in proportion to
	// their number. It is shared: all paced batches of the database, in
	// every process, take turns within it. Default 0.02, which keeps an application's p99
	// latency within 1.5x on a small server; raise it to trade that for
	// speed. 1 or more turns contention pacing off.
	MaxDutyUnderLoad float64
	// MinDutyUnderLoad is the floor of that share, so a migration always
	// progresses however busy the database is (default 0.005).
	MinDutyUnderLoad float64
	// MaxLatencyImpact is how much a migration may raise other sessions'
	// p99 latency while they use the database (0.2: by a fifth). Paced
	// batches measure it with canaries (pace_control.go) and set the duty
	// cycle to the largest share that stays within it, starting from
	// MaxDutyUnderLoad, between the open loop's duty (MaxDutyUnderLoad
	// over the busy sessions, at least MinDutyUnderLoad) and 7%. Default 0.2;
	// negative: no closed loop, the fixed duty cycle MaxDutyUnderLoad
	// (the pacing before the closed loop). MaxDutyUnderLoad >= 1 turns all contention
	// pacing off, whatever this is.
	MaxLatencyImpact float64
	// PaceBurst is how much statement time paced sub-batches run back to
	// back before a batch pauses (default 200ms, see pacedBurst); negative:
	// a pause after every sub-batch, the pacing before bursts, which the
	// benchmark compares against. Not a setting: nothing to tune.
	PaceBurst time.Duration
}

func (h HealthConfig) withDefaults() HealthConfig {
	if h.MaxReplicationLagBytes == 0 {
		h.MaxReplicationLagBytes = 100 << 20
	}
	if h.MaxReplayLag == 0 {
		h.MaxReplayLag = 30 * time.Second
	}
	if h.MaxPendingWAL == 0 {
		h.MaxPendingWAL = pgwal.DefaultMaxPending
	}
	if h.LongTransaction == 0 {
		h.LongTransaction = 10 * time.Minute
	}
	if h.LockTimeout == 0 {
		h.LockTimeout = 500 * time.Millisecond
	}
	if h.Interval == 0 {
		h.Interval = time.Second
	}
	if h.MaxHold == 0 {
		h.MaxHold = time.Minute
	}
	if h.MaxDutyUnderLoad <= 0 {
		h.MaxDutyUnderLoad = defaultMaxDutyUnderLoad
	}
	if h.MinDutyUnderLoad <= 0 {
		h.MinDutyUnderLoad = defaultMinDutyUnderLoad
	}
	h.MinDutyUnderLoad = min(h.MinDutyUnderLoad, h.MaxDutyUnderLoad, 1)
	if h.MaxLatencyImpact == 0 {
		h.MaxLatencyImpact = defaultMaxLatencyImpact
	}
	if h.PaceBurst == 0 {
		h.PaceBurst = pacedBurst
	}
	return h
}

// Signal is one health indicator's verdict.
type Signal struct {
	Indicator string `json:"indicator"`
	// Stop puts the migration on hold; otherwise it is slowed to one
	// batch at a time, or, with Paced, paced.
	Stop bool `json:"stop"`
	// Paced: the batch itself already runs slower (contention: shorter
	// statements, a duty cycle); the signal only records why.
	Paced bool `json:"paced,omitempty"`
	// Duty (0 < Duty <= 1) is the share of the time sub-batch statements
	// may take while paced.
	Duty   float64 `json:"duty,omitempty"`
	Reason string  `json:"reason"`
}

// The indicators read PostgreSQL's statistics views through a [catalog],
// so tests can point them at tables of fabricated rows: a test database has
// no standby and no autovacuum worker that can be started on demand. Each
// indicator is a small type with its own SQL and a pure decision on the
// row it reads.
type catalog struct {
	activity, progressVacuum, replication, locks, archiver string
}

var pgCatalog = catalog{
	activity:       "pg_catalog.pg_stat_activity",
	progressVacuum: "pg_catalog.pg_stat_progress_vacuum",
	replication:    "pg_catalog.pg_stat_replication",
	locks:          "pg_catalog.pg_locks",
	archiver:       pgwal.Archiver,
}

// healthInput is what an indicator looks at.
type healthInput struct {
	table    string
	tableOID uint32
	app      string // application_name of our sub-batch transactions
}

type indicator interface {
	name() string
	// check returns nil when the indicator sees nothing wrong.
	check(ctx context.Context, db Queryer, in healthInput) (*Signal, error)
}

// autovacuumIndicator: autovacuum on our table. A wraparound vacuum must
// not be fought, so it holds the migration; an ordinary one only slows it
// to one batch at a time, since it is cleaning up after us and holding off
// entirely would just stretch the migration.
type autovacuumIndicator struct{ cat catalog }

func (autovacuumIndicator) name() string { return "autovacuum" }

func (a autovacuumIndicator) sql() string {
	return `SELECT bool_or(a.query LIKE '%to prevent wraparound%')
		FROM ` + a.cat.progressVacuum + ` p JOIN ` + a.cat.activity + ` a ON a.pid = p.pid
		WHERE p.relid = $1 AND a.backend_type = 'autovacuum worker'`
}

func (a autovacuumIndicator) check(ctx context.Context, db Queryer, in healthInput) (*Signal, error) {
	var wrap *bool
	if err := db.QueryRow(ctx, a.sql(), in.tableOID).Scan(&wrap); err != nil {
		return nil, err
	}
	return autovacuumSignal(in.table, wrap), nil
}

// autovacuumSignal decides on the indicator's row: wrap is NULL when no
// autovacuum worker is on the table.
func autovacuumSignal(table string, wrap *bool) *Signal {
	if wrap == nil {
		return nil
	}
	s := &Signal{Indicator: "autovacuum", Stop: *wrap, Reason: "autovacuum is running on " + table}
	if *wrap {
		s.Reason += " (to prevent wraparound)"
	}
	return s
}

// replicationLagIndicator: the furthest-behind standby, in bytes of WAL
// and in replay time. Both come from the primary's view, so it runs where
// the migration writes.
type replicationLagIndicator struct {
	cat       catalog
	maxBytes  int64
	maxReplay time.Duration
}

func (replicationLagIndicator) name() string { return "replication_lag" }

func (r replicationLagIndicator) sql() string {
	return `SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8,
		       coalesce(max(extract(epoch FROM replay_lag)), 0)::float8
		FROM ` + r.cat.replication
}

func (r replicationLagIndicator) check(ctx context.Context, db Queryer, _ healthInput) (*Signal, error) {
	var lagBytes, replay float64
	if err := db.QueryRow(ctx, r.sql()).Scan(&lagBytes, &replay); err != nil {
		return nil, err
	}
	return r.signal(lagBytes, replay), nil
}

func (r replicationLagIndicator) signal(lagBytes, replaySeconds float64) *Signal {
	if int64(lagBytes) <= r.maxBytes && replaySeconds <= r.maxReplay.Seconds() {
		return nil
	}
	return &Signal{Indicator: "replication_lag", Stop: true,
		Reason: fmt.Sprintf("replication lag %d MB, replay lag %.1fs", int64(lagBytes)>>20, replaySeconds)}
}

// walArchiveIndicator: WAL segments waiting for archival (pgwal).
type walArchiveIndicator struct {
	cat catalog
	max int64
}

func (walArchiveIndicator) name() string { return "wal_archive" }

func (w walArchiveIndicator) check(ctx context.Context, db Queryer, _ healthInput) (*Signal, error) {
	n, ok, err := pgwal.PendingSegments(ctx, db, w.cat.archiver)
	if err != nil || !ok || n <= w.max {
		return nil, err
	}
	return &Signal{Indicator: "wal_archive", Stop: true,
		Reason: fmt.Sprintf("%d WAL segments wait for archiving (more than %d): the archiver is behind", n, w.max)}, nil
}

// lockWaitIndicator: sessions waiting on locks our sub-batches hold, or
// our sub-batches waiting on others. It sees only what overlaps the check
// (parallel batches, other engines); a sub-batch of this engine that waits
// is caught by its lock_timeout instead (see lockWaitSignal).
type lockWaitIndicator struct{ cat catalog }

func (lockWaitIndicator) name() string { return "lock_waits" }

func (l lockWaitIndicator) sql() string {
	return `SELECT count(*) FILTER (WHERE w.application_name <> $1),
		       count(*) FILTER (WHERE w.application_name = $1)
		FROM ` + l.cat.activity + ` w
		WHERE w.datname = current_database() AND w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
		  AND (w.application_name = $1 OR EXISTS (
		        SELECT 1 FROM ` + l.cat.activity + ` b WHERE b.pid = ANY (pg_blocking_pids(w.pid)) AND b.application_name = $1))`
}

func (l lockWaitIndicator) check(ctx context.Context, db Queryer, in healthInput) (*Signal, error) {
	var blocked, waiting int
	if err := db.QueryRow(ctx, l.sql(), in.app).Scan(&blocked, &waiting); err != nil {
		return nil, err
	}
	if blocked+waiting == 0 {
		return nil, nil
	}
	return &Signal{Indicator: "lock_waits", Stop: true,
		Reason: fmt.Sprintf("%d session(s) wait on our locks, we wait on %d", blocked, waiting)}, nil
}

// longTransactionIndicator: another transaction open for long keeps vacuum
// from cleaning up the row versions we leave behind.
type longTransactionIndicator struct {
	cat catalog
	age time.Duration
}

func (longTransactionIndicator) name() string { return "long_transaction" }

func (l longTransactionIndicator) sql() string {
	return `SELECT pid, extract(epoch FROM now() - xact_start)::float8, coalesce(state, '')
		FROM ` + l.cat.activity + `
		WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
		  AND xact_start < now() - make_interval(secs => $1) AND application_name NOT LIKE '` + appNamePrefix + `%'
		ORDER BY xact_start LIMIT 1`
}

func (l longTransactionIndicator) check(ctx context.Context, db Queryer, _ healthInput) (*Signal, error) {
	var pid int
	var age float64
	var state string
	err := db.QueryRow(ctx, l.sql(), l.age.Seconds()).Scan(&pid, &age, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &Signal{Indicator: "long_transaction", Stop: true,
		Reason: fmt.Sprintf("transaction of pid %d open for %s (%s)", pid, time.Duration(age*float64(time.Second)).Round(time.Millisecond), state)}, nil
}

func (e *Engine) indicators() []indicator {
	h := e.health
	return []indicator{
		autovacuumIndicator{cat: e.cat},
		replicationLagIndicator{cat: e.cat, maxBytes: h.MaxReplicationLagBytes, maxReplay: h.MaxReplayLag},
		walArchiveIndicator{cat: e.cat, max: h.MaxPendingWAL},
		lockWaitIndicator{cat: e.cat},
		longTransactionIndicator{cat: e.cat, age: h.LongTransaction},
	}
}

// Evaluate runs the health indicators for migration m on table t.
// Indicators that cannot run (e.g. missing privileges) are skipped, as
// GitLab's Unknown signal: they never hold a migration.
func (e *Engine) Evaluate(ctx context.Context, m *Migration, tableOID uint32) []Signal {
	sigs, errs := e.evaluate(ctx, m, tableOID)
	for _, err := range errs {
		if ctx.Err() == nil {
			e.log.Debug("health indicator could not run", zap.Int64("migration_id", m.ID), zap.Error(err))
		}
	}
	return sigs
}

func (e *Engine) evaluate(ctx context.Context, m *Migration, tableOID uint32) ([]Signal, []error) {
	if e.health.Disabled {
		return nil, nil
	}
	in := healthInput{table: m.Table, tableOID: tableOID, app: appNamePrefix + strconv.FormatInt(m.ID, 10)}
	var out []Signal
	var errs []error
	for _, ind := range e.indicators() {
		s, err := ind.check(ctx, e.pool, in)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ind.name(), err))
			continue
		}
		if s != nil {
			out = append(out, *s)
		}
	}
	return out, errs
}

// lockWaitSignal explains a sub-batch that gave up waiting for a lock
// (lock_timeout): who holds locks on the table now, so `bbm show` points
// at the session to look at.
func (e *Engine) lockWaitSignal(ctx context.Context, m *Migration, tableOID uint32, who string, waited time.Duration) Signal {
	reason := fmt.Sprintf("%s waited over %s for a lock on %s", who, waited, m.Table)
	var holders *string
	_ = e.pool.QueryRow(ctx, `
		SELECT string_agg(format('pid %s (%s, %s: %s)', a.pid, a.state, l.mode, left(regexp_replace(a.query, '\s+', ' ', 'g'), 60)), ', ' ORDER BY a.xact_start)
		FROM (SELECT DISTINCT ON (pid) pid, mode FROM pg_catalog.pg_locks
		      WHERE relation = $1 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		      ORDER BY pid, mode) l
		JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE a.pid <> pg_backend_pid() AND coalesce(a.application_name, '') NOT LIKE '`+appNamePrefix+`%'`, tableOID).Scan(&holders)
	if holders != nil {
		reason += "; sessions holding locks on it: " + *holders
	}
	return Signal{Indicator: "lock_waits", Stop: true, Reason: reason}
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
	sigs := e.Evaluate(ctx, m, t.OID)
	if s := e.paceSignal(m.ID); s != nil {
		sigs = append(sigs, *s)
	}
	e.applyHealth(ctx, m, sigs)
}

// applyHealth holds (stop) or slows the migration with a logged reason,
// backing off exponentially while the signal persists, records why it is
// paced, or clears the reason.
func (e *Engine) applyHealth(ctx context.Context, m *Migration, sigs []Signal) {
	var stop, slow, paced []string
	for _, s := range sigs {
		switch {
		case s.Stop:
			stop = append(stop, s.Indicator+": "+s.Reason)
		case s.Paced:
			paced = append(paced, s.Indicator+": "+s.Reason)
		default:
			slow = append(slow, s.Indicator+": "+s.Reason)
		}
	}
	if len(stop) > 0 || len(slow) == 0 {
		if since, n, ok := e.slowed.Off(m.ID); ok {
			e.log.Info("batched background migration no longer slowed", zap.Int64("migration_id", m.ID),
				zap.Duration("for", time.Since(since).Round(time.Second)), zap.Int("times", n))
		}
	}
	var err error
	switch {
	case len(stop) > 0:
		reason := strings.Join(append(append(stop, slow...), paced...), "; ")
		var until time.Time
		err = e.pool.QueryRow(ctx, `UPDATE batched_background_migrations
			SET on_hold_until = now() + least(make_interval(secs => power(2, least(hold_count, 10))), make_interval(secs => $3)),
			    hold_reason = $2, hold_count = hold_count + 1
			WHERE id = $1 RETURNING on_hold_until`, m.ID, truncate(reason, 1000), e.health.MaxHold.Seconds()).Scan(&until)
		e.log.Info(fmt.Sprintf("BatchedMigration[id: %d] put on hold until %s", m.ID, until.Format(time.RFC3339)),
			zap.Int64("migration_id", m.ID), zap.String("reason", reason), zap.Float64("duration_s", time.Until(until).Seconds()))
	case len(slow) > 0:
		reason := strings.Join(append(slow, paced...), "; ")
		_, err = e.pool.Exec(ctx, `UPDATE batched_background_migrations SET slow_until = now() + interval '10 seconds', hold_reason = $2
			WHERE id = $1`, m.ID, truncate(reason, 1000))
		if since, n, ok := e.slowed.On(m.ID, time.Now()); ok {
			e.log.Info("batched background migration slowed to one batch at a time", zap.Int64("migration_id", m.ID), zap.String("reason", reason),
				zap.Duration("for", time.Since(since).Round(time.Second)), zap.Int("times", n))
		}
	case len(paced) > 0:
		// Pacing changes no schedule, only the reason `bbm show` prints
		// (it starts and stops are logged by storePacer). A hold or slow
		// still in force keeps its own reason.
		_, err = e.pool.Exec(ctx, `UPDATE batched_background_migrations SET hold_reason = $2
			WHERE id = $1 AND hold_reason IS DISTINCT FROM $2 AND coalesce(on_hold_until, '-infinity') < now()
			  AND coalesce(slow_until, '-infinity') < now()`, m.ID, truncate(strings.Join(paced, "; "), 1000))
	default:
		_, err = e.pool.Exec(ctx, `UPDATE batched_background_migrations SET hold_count = 0, hold_reason = NULL
			WHERE id = $1 AND (hold_count <> 0 OR hold_reason IS NOT NULL) AND coalesce(on_hold_until, '-infinity') < now()
			  AND coalesce(slow_until, '-infinity') < now()`, m.ID)
	}
	if err != nil && ctx.Err() == nil {
		e.log.Warn("could not record health verdict", zap.Int64("migration_id", m.ID), zap.Error(err))
	}
}
