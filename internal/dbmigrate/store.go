package dbmigrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// LockKey is the session advisory lock one migrator holds while it runs
// ("ferrydmg"). Advisory locks are per database, so migrators of different
// databases on one server do not block each other.
const LockKey int64 = 0x6665727279646d67

// LogTable records every attempt; schema_migrations stays Rails' table.
const LogTable = "ferry_migration_log"

// Attempt is one row of ferry_migration_log, with its liveness.
type Attempt struct {
	ID            int64      `json:"id"`
	Version       Version    `json:"version"`
	Name          string     `json:"name"`
	Direction     string     `json:"direction"`
	NoTransaction bool       `json:"no_transaction"`
	StartedAt     time.Time  `json:"started_at"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
	Success       *bool      `json:"success,omitempty"`
	Error         string     `json:"error,omitempty"`
	BackendPID    int        `json:"backend_pid"`
	OSPID         int        `json:"os_pid,omitempty"`
	Host          string     `json:"host,omitempty"`
	// Running: unfinished, and its session still holds the migration lock.
	Running bool `json:"running,omitempty"`
	// Died: unfinished, and its migrator is gone.
	Died bool `json:"died,omitempty"`
	// Dirty: this attempt may have left the database half-migrated.
	Dirty bool `json:"dirty,omitempty"`
	// Applied: the version is in schema_migrations (set by Repair).
	Applied bool `json:"applied,omitempty"`
}

func (a *Attempt) who() string {
	s := "backend pid " + strconv.Itoa(a.BackendPID)
	if a.Host != "" || a.OSPID != 0 {
		s += fmt.Sprintf(" (ferry pid %d on %s)", a.OSPID, a.Host)
	}
	return s
}

// state is what the database says about migrations.
type state struct {
	tables    bool
	applied   map[Version]bool
	appliedAt map[Version]time.Time
	last      map[Version]*Attempt
	holder    *Holder
}

// dirty returns the lowest dirty attempt, if any.
func (s *state) dirty() *Attempt {
	var d *Attempt
	for _, a := range s.last {
		if a.Dirty && (d == nil || a.Version.Compare(d.Version) < 0) {
			d = a
		}
	}
	return d
}

type queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// loadState reads schema_migrations and the log. weHoldLock says the
// caller holds the migration lock, so no other attempt can be running.
func loadState(ctx context.Context, q queryer, weHoldLock bool) (*state, error) {
	st := &state{applied: map[Version]bool{}, appliedAt: map[Version]time.Time{}, last: map[Version]*Attempt{}}
	var sm, lg bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL, to_regclass('ferry_migration_log') IS NOT NULL`).Scan(&sm, &lg); err != nil {
		return nil, fmt.Errorf("read migration state: %w", err)
	}
	st.tables = sm && lg
	if sm {
		rows, err := q.Query(ctx, `SELECT version::text FROM schema_migrations`)
		if err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		for _, s := range vs {
			if v, err := ParseVersion(s); err == nil {
				st.applied[v] = true
			}
		}
	}
	if !weHoldLock {
		h, err := lockHolder(ctx, q)
		if err != nil {
			return nil, err
		}
		st.holder = h
	}
	if !lg {
		return st, nil
	}
	rows, err := q.Query(ctx, `SELECT DISTINCT ON (version) id, version, name, direction, no_transaction, started_at, finished_at,
			success, dirty, coalesce(error, ''), backend_pid, coalesce(os_pid, 0), coalesce(host, ''),
			(SELECT max(coalesce(l2.finished_at, l2.started_at)) FROM ferry_migration_log l2
			  WHERE l2.version = l.version AND l2.direction IN ('up', 'mark') AND l2.success
			    AND NOT (l2.direction = 'mark' AND l2.error IS NOT DISTINCT FROM '`+alreadyMarked+`'))
		FROM ferry_migration_log l ORDER BY version, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", LogTable, err)
	}
	defer rows.Close()
	for rows.Next() {
		a := &Attempt{}
		var v string
		var dirty bool
		var appliedAt *time.Time
		if err := rows.Scan(&a.ID, &v, &a.Name, &a.Direction, &a.NoTransaction, &a.StartedAt, &a.FinishedAt,
			&a.Success, &dirty, &a.Error, &a.BackendPID, &a.OSPID, &a.Host, &appliedAt); err != nil {
			return nil, fmt.Errorf("read %s: %w", LogTable, err)
		}
		a.Version = Version(v)
		if appliedAt != nil {
			st.appliedAt[a.Version] = *appliedAt
		}
		if a.Direction == "up" || a.Direction == "down" {
			switch {
			case a.FinishedAt == nil && !weHoldLock && st.holder != nil && st.holder.PID == a.BackendPID:
				a.Running = true
			case a.FinishedAt == nil:
				a.Died = true
				// A transaction dies with its session: nothing is left behind.
				a.Dirty = a.NoTransaction
			case a.Success != nil && !*a.Success:
				a.Dirty = dirty
			}
		}
		st.last[a.Version] = a
	}
	return st, rows.Err()
}

// lockHolder names the session holding the migration lock (nil if none).
func lockHolder(ctx context.Context, q queryer) (*Holder, error) {
	h := &Holder{}
	err := q.QueryRow(ctx, `SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''),
			coalesce(a.client_hostname, ''), coalesce(a.usename::text, ''), coalesce(a.backend_start, 'epoch'), coalesce(a.state, ''),
			coalesce(left(a.query, 200), '')
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1
		LIMIT 1`, LockKey).Scan(&h.PID, &h.ApplicationName, &h.ClientAddr, &h.ClientHostname, &h.Usename, &h.BackendStart, &h.State, &h.Query)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up the migration lock holder: %w", err)
	}
	return h, nil
}

// lockedConn is a connection holding the migration lock.
type lockedConn struct {
	*pgxpool.Conn
}

// acquire takes the migration lock on a dedicated connection: at once when
// timeout <= 0, else waiting up to timeout (PostgreSQL's lock_timeout, so
// the wait is a real lock queue, not polling).
func acquire(ctx context.Context, pool *pgxpool.Pool, appName string, timeout time.Duration) (*lockedConn, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*lockedConn, error) {
		conn.Release()
		return nil, err
	}
	// Before any session state: behind a transaction pooler it would stay
	// on a server connection other clients get.
	if err := connIsSession(ctx, conn); err != nil {
		return fail(err)
	}
	if _, err := conn.Exec(ctx, `SELECT set_config('application_name', $1, false)`, appName); err != nil {
		return fail(err)
	}
	start := time.Now()
	if timeout <= 0 {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, LockKey).Scan(&ok); err != nil {
			return fail(err)
		}
		if !ok {
			h, _ := lockHolder(ctx, conn)
			return fail(&LockedError{Holder: h})
		}
	} else {
		if _, err := conn.Exec(ctx, `SELECT set_config('lock_timeout', $1, false)`, strconv.FormatInt(timeout.Milliseconds(), 10)); err != nil {
			return fail(err)
		}
		_, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, LockKey)
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), `RESET lock_timeout`); rerr != nil && err == nil {
			err = rerr
		}
		if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "55P03" {
			h, _ := lockHolder(ctx, conn)
			return fail(&LockedError{Holder: h, Waited: time.Since(start).Round(time.Millisecond)})
		}
		if err != nil {
			return fail(err)
		}
	}
	lc := &lockedConn{conn}
	if err := lc.checkSession(ctx); err != nil {
		lc.release(ctx)
		return nil, err
	}
	if _, err := conn.Exec(ctx, ferryschema.MigrationLogDDL); err != nil {
		lc.release(ctx)
		return nil, fmt.Errorf("create migration tables: %w", err)
	}
	return lc, nil
}

// checkSession makes sure the connection is a real session that holds the
// lock. Behind a transaction pooler (PgBouncer) each statement may run on
// another server connection: the lock would protect nothing, and stay
// behind on a connection other clients get. The tell: the backend pid the
// server announced at connect (the pooler's made-up one) is not the pid
// that runs our statements.
func (c *lockedConn) checkSession(ctx context.Context) error {
	var pid uint32
	var held bool
	if err := c.QueryRow(ctx, `SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND pid = pg_backend_pid() AND objsubid = 1 AND classid::int8 = ($1::int8 >> 32) AND objid::int8 = ($1::int8 & 4294967295))`,
		LockKey).Scan(&pid, &held); err != nil {
		return err
	}
	if pid != c.Conn.Conn().PgConn().PID() || !held {
		return ErrNeedsSession
	}
	return nil
}

// requireSession returns ErrNeedsSession when pool goes through a
// transaction pooler (see checkSession).
func requireSession(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	return connIsSession(ctx, conn)
}

// connIsSession returns ErrNeedsSession unless conn's statements run on the
// backend the server announced at connect (see checkSession).
func connIsSession(ctx context.Context, conn *pgxpool.Conn) error {
	var pid uint32
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		return err
	}
	if pid != conn.Conn().PgConn().PID() {
		return ErrNeedsSession
	}
	return nil
}

func (c *lockedConn) release(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	var unlocked bool
	err := c.QueryRow(ctx, `SELECT pg_advisory_unlock($1)`, LockKey).Scan(&unlocked)
	if err == nil && !unlocked {
		err = errors.New("the migration lock was not held by this connection")
	}
	if err == nil {
		_, err = c.Exec(ctx, `RESET application_name`)
	}
	if err != nil {
		// Never return a connection that may still hold the lock.
		_ = c.Hijack().Close(ctx)
		return
	}
	c.Release()
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
