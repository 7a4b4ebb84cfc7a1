package dbmigrate

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// Options configure a [Migrator]. Zero values are usable.
type Options struct {
	Logger *zap.Logger
	// Dir is only used to name files in messages.
	Dir string
	// Gate checks and queues batched background migrations. Nil means a
	// [TableGate] on the pool: gates can be checked, not queued/finalized.
	Gate BBMGate
	// Finalize lets require-bbm directives finalize unfinished migrations
	// inline instead of stopping.
	Finalize bool
	// LockTimeout is how long to wait for another migrator; 0 fails at once.
	LockTimeout time.Duration
	// Out receives one progress line per migration (Rails' "== ... migrating").
	Out io.Writer
	// Database is ferry's name for the database when several are
	// configured: messages that give a command then select it.
	Database string
	// ApplicationName is set on the lock session so others can see who
	// holds it (default "ferry db migrator host=<host> pid=<pid>").
	ApplicationName string
}

// Migrator applies and reverts migrations on one database.
type Migrator struct {
	pool *pgxpool.Pool
	migs []*Migration
	byV  map[Version]*Migration
	o    Options
	log  *zap.Logger
}

// New returns a migrator for migs (as returned by [Load]).
func New(pool *pgxpool.Pool, migs []*Migration, o Options) *Migrator {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Gate == nil {
		o.Gate = TableGate{DB: pool}
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.ApplicationName == "" {
		o.ApplicationName = fmt.Sprintf("ferry db migrator host=%s pid=%d", hostname(), os.Getpid())
	}
	m := &Migrator{pool: pool, migs: migs, byV: map[Version]*Migration{}, o: o, log: o.Logger.Named("dbmigrate")}
	for _, mg := range migs {
		m.byV[mg.Version] = mg
	}
	return m
}

// Migrations returns the loaded migrations, oldest first.
func (m *Migrator) Migrations() []*Migration { return m.migs }

// planUp lists pending migrations up to and including to ("" = all).
func (m *Migrator) planUp(st *state, to Version) ([]*Migration, error) {
	if to != "" {
		if _, ok := m.byV[to]; !ok {
			return nil, fmt.Errorf("%w: %s has no migration file in %s", ErrUnknownVersion, to, m.o.Dir)
		}
	}
	var plan []*Migration
	for _, mg := range m.migs {
		if to != "" && mg.Version.Compare(to) > 0 {
			break
		}
		if !st.applied[mg.Version] {
			plan = append(plan, mg)
		}
	}
	return plan, nil
}

// planDown lists, newest first, the migrations above target that are
// applied or dirty, and checks that each has a down file.
func (m *Migrator) planDown(st *state, target Version) ([]*Migration, error) {
	if target != "0" && m.byV[target] == nil && !st.applied[target] {
		return nil, fmt.Errorf("%w: %s is neither a migration in %s nor an applied version (use 0 to revert everything)", ErrUnknownVersion, target, m.o.Dir)
	}
	set := map[Version]bool{}
	for v := range st.applied {
		if v.Compare(target) > 0 {
			set[v] = true
		}
	}
	for v, a := range st.last {
		if a.Dirty && v.Compare(target) > 0 {
			set[v] = true
		}
	}
	vs := make([]Version, 0, len(set))
	for v := range set {
		vs = append(vs, v)
	}
	slices.SortFunc(vs, func(a, b Version) int { return b.Compare(a) })
	var plan []*Migration
	var missing []string
	for _, v := range vs {
		mg := m.byV[v]
		switch {
		case mg == nil:
			missing = append(missing, fmt.Sprintf("version %s is applied but has no files in %s", v, m.o.Dir))
		case mg.DownFile == "":
			missing = append(missing, joinDir(m.o.Dir, mg.ID()+".down.sql")+" does not exist")
		case mg.Down.Irreversible != "":
			missing = append(missing, fmt.Sprintf("%s is irreversible (%s)", joinDir(m.o.Dir, mg.DownFile), mg.Down.Irreversible))
		default:
			plan = append(plan, mg)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: cannot go down to %s: %s", ErrMissingDown, target, strings.Join(missing, "; "))
	}
	return plan, nil
}

// previous is the highest known version below v ("0" if none): the
// downto target that undoes v.
func (m *Migrator) previous(st *state, v Version) Version {
	prev := Version("0")
	consider := func(w Version) {
		if w.Compare(v) < 0 && w.Compare(prev) > 0 {
			prev = w
		}
	}
	for w := range m.byV {
		consider(w)
	}
	for w := range st.applied {
		consider(w)
	}
	return prev
}

// Plan is what [Migrator.Migrate] or [Migrator.DownTo] would run.
type Plan struct {
	Direction  string
	Migrations []*Migration
	// Dirty is set when the database is dirty (Migrate would refuse).
	Dirty error
}

// PlanUp returns what Migrate(ctx, to) would run, without locking or
// changing anything.
func (m *Migrator) PlanUp(ctx context.Context, to Version) (*Plan, error) {
	st, err := loadState(ctx, m.pool, false)
	if err != nil {
		return nil, err
	}
	p := &Plan{Direction: "up"}
	if d := st.dirty(); d != nil {
		p.Dirty = m.dirtyError(st, d)
	}
	p.Migrations, err = m.planUp(st, to)
	return p, err
}

// PlanDown returns what DownTo(ctx, target) would run.
func (m *Migrator) PlanDown(ctx context.Context, target Version) (*Plan, error) {
	st, err := loadState(ctx, m.pool, false)
	if err != nil {
		return nil, err
	}
	p := &Plan{Direction: "down"}
	p.Migrations, err = m.planDown(st, target)
	return p, err
}

// Migrate applies pending migrations in version order, up to and
// including to ("" = all). It refuses to start on a dirty database and
// stops at the first failure. It returns the versions it applied.
func (m *Migrator) Migrate(ctx context.Context, to Version) ([]Version, error) {
	c, err := acquire(ctx, m.pool, m.o.ApplicationName, m.o.LockTimeout)
	if err != nil {
		return nil, err
	}
	defer c.release(ctx)
	st, err := loadState(ctx, c, true)
	if err != nil {
		return nil, err
	}
	if d := st.dirty(); d != nil {
		return nil, m.dirtyError(st, d)
	}
	plan, err := m.planUp(st, to)
	if err != nil {
		return nil, err
	}
	var done []Version
	for _, mg := range plan {
		if err := m.run(ctx, c, mg, "up"); err != nil {
			return done, err
		}
		done = append(done, mg.Version)
	}
	return done, nil
}

// DownTo reverts, newest first, every applied (or dirty) migration above
// target; target itself stays applied, as with Rails' migrate VERSION=x
// going down, goose down-to and Sourcegraph downto. Target "0" reverts
// everything. Nothing runs unless every needed down file exists.
func (m *Migrator) DownTo(ctx context.Context, target Version) ([]Version, error) {
	c, err := acquire(ctx, m.pool, m.o.ApplicationName, m.o.LockTimeout)
	if err != nil {
		return nil, err
	}
	defer c.release(ctx)
	st, err := loadState(ctx, c, true)
	if err != nil {
		return nil, err
	}
	if d := st.dirty(); d != nil && d.Version.Compare(target) <= 0 {
		// Going down on top of a half-applied older migration would build
		// on an unknown state.
		return nil, m.dirtyError(st, d)
	}
	plan, err := m.planDown(st, target)
	if err != nil {
		return nil, err
	}
	var done []Version
	for _, mg := range plan {
		if err := m.run(ctx, c, mg, "down"); err != nil {
			return done, err
		}
		done = append(done, mg.Version)
	}
	return done, nil
}

func (m *Migrator) run(ctx context.Context, c *lockedConn, mg *Migration, dir string) error {
	sc := mg.Up
	if dir == "down" {
		sc = mg.Down
	}
	verb := map[string]string{"up": "migrat", "down": "revert"}[dir]
	fmt.Fprintf(m.o.Out, "== %s %s: %sing ==\n", mg.Version, mg.Name, verb)
	start := time.Now()
	for _, b := range sc.Require {
		if err := m.ensureFinished(ctx, mg, b); err != nil {
			return err
		}
	}
	var logID int64
	if err := c.QueryRow(ctx, `INSERT INTO ferry_migration_log (version, name, direction, no_transaction, os_pid, host)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`, string(mg.Version), mg.Name, dir, sc.NoTransaction, os.Getpid(), hostname()).Scan(&logID); err != nil {
		return fmt.Errorf("record attempt: %w", err)
	}
	// Debug: Out prints the step already ("== V name: migrating =="), and
	// each event is printed once.
	m.log.Debug("running migration", zap.String("version", string(mg.Version)), zap.String("name", mg.Name),
		zap.String("direction", dir), zap.Bool("no_transaction", sc.NoTransaction))
	record := `INSERT INTO schema_migrations (version) SELECT $1::text WHERE NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version::text = $1::text)`
	if dir == "down" {
		record = `DELETE FROM schema_migrations WHERE version::text = $1::text`
	}
	const finish = `UPDATE ferry_migration_log SET finished_at = clock_timestamp(), success = true WHERE id = $1`
	failed := func(err error, dirty bool) error {
		if _, lerr := c.Exec(context.WithoutCancel(ctx), `UPDATE ferry_migration_log
			SET finished_at = clock_timestamp(), success = false, dirty = $2, error = $3 WHERE id = $1`, logID, dirty, err.Error()); lerr != nil {
			m.log.Error("could not record the failure", zap.Error(lerr))
		}
		// Debug, not Error: the caller gets the error and reports it (the
		// CLI's first stderr line is that error, not this log line).
		m.log.Debug("migration failed", zap.String("version", string(mg.Version)), zap.String("direction", dir), zap.Bool("dirty", dirty), zap.Error(err))
		me := &MigrationError{Version: mg.Version, Name: mg.Name, Direction: dir, Dirty: dirty, Err: err, Database: m.o.Database}
		if dir == "up" && (dirty || duplicateObject(err)) {
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			me.InvalidIndexes = invalidIndexes(ictx, c, sc.SQL)
			cancel()
		}
		return me
	}

	file := joinDir(m.o.Dir, mg.UpFile)
	if dir == "down" {
		file = joinDir(m.o.Dir, mg.DownFile)
	}
	if sc.NoTransaction {
		stmts := sc.Statements()
		for i, stmt := range stmts {
			if _, err := c.Exec(ctx, stmt); err != nil {
				return failed(sqlError(err, file, sc.SQL, stmt, i+1, len(stmts)), true)
			}
		}
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return failed(err, sc.NoTransaction)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if !sc.NoTransaction {
		if _, err := tx.Exec(ctx, sc.SQL); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return failed(sqlError(err, file, sc.SQL, sc.SQL, 0, 0), false)
		}
	}
	if _, err := tx.Exec(ctx, record, string(mg.Version)); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return failed(fmt.Errorf("record version in schema_migrations: %w", err), sc.NoTransaction)
	}
	if _, err := tx.Exec(ctx, finish, logID); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return failed(err, sc.NoTransaction)
	}
	if err := tx.Commit(ctx); err != nil {
		return failed(err, sc.NoTransaction)
	}
	// Queued after the commit because the engine validates the table and
	// column on its own connection. Queueing is idempotent; if it fails the
	// schema change stays applied and the database is marked dirty, so a
	// human queues it (or repairs) before the next migration runs.
	if dir == "up" {
		for _, b := range sc.Queue {
			if err := m.o.Gate.Queue(ctx, b, mg.Version); err != nil {
				return failed(fmt.Errorf("applied, but queueing batched background migration %s failed: %w", b.FinalizeCommand(), err), true)
			}
			fmt.Fprintf(m.o.Out, "-- queued batched background migration %s %s %s %s\n", b.Class, b.Table, b.Column, b.Args)
		}
	}
	if u, ok := m.o.Gate.(Unqueuer); ok && dir == "down" {
		// What its up queued goes with it, as GitLab's down deletes it.
		for _, b := range mg.Up.Queue {
			deleted, err := u.Unqueue(ctx, b, mg.Version)
			if err != nil {
				return failed(fmt.Errorf("reverted, but deleting batched background migration %s %s %s %s (queued by its up) failed: %w",
					b.Class, b.Table, b.Column, b.Args, err), true)
			}
			if deleted {
				fmt.Fprintf(m.o.Out, "-- deleted batched background migration %s %s %s %s (queued by its up)\n", b.Class, b.Table, b.Column, b.Args)
			}
		}
	}
	fmt.Fprintf(m.o.Out, "== %s %s: %sed (%.4fs) ==\n", mg.Version, mg.Name, verb, time.Since(start).Seconds())
	return nil
}

// GateStatus reports the status of the batched background migration a
// require-bbm gate names (found is false when it was never queued), as
// migrate would see it.
func (m *Migrator) GateStatus(ctx context.Context, b BBM) (status string, found bool, err error) {
	return m.o.Gate.Status(ctx, b)
}

// ensureFinished is GitLab's ensure_batched_background_migration_is_finished.
func (m *Migrator) ensureFinished(ctx context.Context, mg *Migration, b BBM) error {
	status, found, err := m.o.Gate.Status(ctx, b)
	if err != nil {
		return err
	}
	if !found {
		// As GitLab: a migration that was never queued (e.g. a fresh
		// install whose data needed no backfill) does not block.
		fmt.Fprintf(m.o.Out, "-- required batched background migration %s was never queued in this database (a fresh install needs no backfill); continuing\n", b)
		m.log.Debug("required batched background migration was never queued; continuing",
			zap.String("class", b.Class), zap.String("table", b.Table), zap.String("column", b.Column), zap.String("args", string(b.Args)))
		return nil
	}
	if statusDone(status) {
		return nil
	}
	var finalizeErr error
	if m.o.Finalize {
		fmt.Fprintf(m.o.Out, "-- finalizing batched background migration %s %s %s %s (it is '%s')\n", b.Class, b.Table, b.Column, b.Args, status)
		if finalizeErr = m.o.Gate.Finalize(ctx, b); finalizeErr != nil {
			// Info: the GateError below carries it, printed once.
			m.log.Debug("inline finalize failed", zap.Error(finalizeErr))
		}
		if status, _, err = m.o.Gate.Status(ctx, b); err != nil {
			return err
		}
		if statusDone(status) {
			return nil
		}
	}
	ge := &GateError{BBM: b, Status: status, RequiredBy: mg.ID(), FinalizeErr: finalizeErr, Database: m.o.Database}
	if w, ok := m.o.Gate.(WayOuter); ok {
		ge.WayOut = w.WayOut(ctx, b)
	}
	return ge
}

// alreadyMarked is the log note of a mark-complete that found the version
// recorded: an audit line, not when it was applied.
const alreadyMarked = "already marked complete"

// MarkComplete records version as applied without running it (GitLab's
// mark_migration_complete). It reports whether it already was. It also
// clears a dirty mark on that version: the human completed it by hand.
func (m *Migrator) MarkComplete(ctx context.Context, v Version) (already bool, err error) {
	c, err := acquire(ctx, m.pool, m.o.ApplicationName, m.o.LockTimeout)
	if err != nil {
		return false, err
	}
	defer c.release(ctx)
	tag, err := c.Exec(ctx, `INSERT INTO schema_migrations (version) SELECT $1::text WHERE NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version::text = $1::text)`, string(v))
	if err != nil {
		return false, fmt.Errorf("mark %s complete: %w", v, err)
	}
	name := ""
	if mg := m.byV[v]; mg != nil {
		name = mg.Name
	}
	if _, err := c.Exec(ctx, `INSERT INTO ferry_migration_log (version, name, direction, finished_at, success, os_pid, host, error)
		VALUES ($1, $2, 'mark', clock_timestamp(), true, $3, $4, $5)`, string(v), name, os.Getpid(), hostname(),
		map[bool]string{true: alreadyMarked, false: "marked complete"}[tag.RowsAffected() == 0]); err != nil {
		return false, fmt.Errorf("record mark-complete: %w", err)
	}
	return tag.RowsAffected() == 0, nil
}

// Repair clears the dirty mark once a human has fixed the database. If
// version is not empty it must be the dirty one. The version's applied
// state is unchanged: an up that failed stays pending (migrate re-runs it;
// use MarkComplete if it was finished by hand). It returns the cleared
// attempt.
func (m *Migrator) Repair(ctx context.Context, version Version) (*Attempt, error) {
	c, err := acquire(ctx, m.pool, m.o.ApplicationName, m.o.LockTimeout)
	if err != nil {
		return nil, err
	}
	defer c.release(ctx)
	st, err := loadState(ctx, c, true)
	if err != nil {
		return nil, err
	}
	d := st.dirty()
	if d == nil {
		return nil, ErrNotDirty
	}
	if version != "" && version != d.Version {
		return nil, fmt.Errorf("%w: version %s is not dirty; the dirty one is %s", ErrNotDirty, version, d.Version)
	}
	if _, err := c.Exec(ctx, `INSERT INTO ferry_migration_log (version, name, direction, finished_at, success, os_pid, host, error)
		VALUES ($1, $2, 'repair', clock_timestamp(), true, $3, $4, $5)`, string(d.Version), d.Name, os.Getpid(), hostname(),
		fmt.Sprintf("cleared dirty state of %s attempt #%d", d.Direction, d.ID)); err != nil {
		return nil, fmt.Errorf("record repair: %w", err)
	}
	m.log.Debug("dirty state cleared", zap.String("version", string(d.Version)), zap.Int64("attempt", d.ID))
	d.Applied = st.applied[d.Version]
	return d, nil
}

// MigrationStatus is one line of [Migrator.Status].
type MigrationStatus struct {
	Version Version `json:"version"`
	Name    string  `json:"name"`
	// State: applied, pending, failed, dirty, running or interrupted
	// (a transactional attempt whose migrator died: rolled back, pending).
	State       string     `json:"state"`
	AppliedAt   *time.Time `json:"applied_at,omitempty"`
	HasFile     bool       `json:"has_file"`
	HasDown     bool       `json:"has_down"`
	LastAttempt *Attempt   `json:"last_attempt,omitempty"`
}

// Status is the whole picture.
type Status struct {
	Migrations []MigrationStatus `json:"migrations"`
	Current    Version           `json:"current"`
	Pending    int               `json:"pending"`
	// PendingUnknown: no migration files were read (status run outside
	// the application's folder), so Pending counts nothing.
	PendingUnknown bool `json:"pending_unknown,omitempty"`
	// Dirty: a migration failed outside a transaction (or its migrator
	// died) and the database may be half-migrated; migrate refuses until
	// one of DirtyMigration.WaysOut is taken.
	Dirty          bool       `json:"dirty"`
	DirtyMigration *DirtyInfo `json:"dirty_migration,omitempty"`
	Holder         *Holder    `json:"lock_holder,omitempty"`
}

// DirtyInfo describes the dirty migration and the ways out.
type DirtyInfo struct {
	Attempt
	// Downto is the `ferry db downto` target that undoes it.
	Downto Version `json:"downto"`
	// Message is the error migrate gives.
	Message string `json:"message"`
	// WaysOut are the commands that clear it, each with when to use it.
	WaysOut []string `json:"ways_out"`
}

// dirtyError is the error for dirty attempt d.
func (m *Migrator) dirtyError(st *state, d *Attempt) *DirtyError {
	e := &DirtyError{Attempt: *d, Previous: m.previous(st, d.Version), Database: m.o.Database}
	// Without files (status outside the app's folder) nothing is known
	// to be missing.
	if mg := m.byV[d.Version]; len(m.migs) > 0 && (mg == nil || mg.DownFile == "") {
		e.MissingDown = m.downFile(d)
		if mg == nil {
			e.MissingUp = joinDir(m.o.Dir, string(d.Version)+"_"+d.Name+".up.sql")
		}
	}
	return e
}

// downFile is where attempt d's down file is, or would be.
func (m *Migrator) downFile(d *Attempt) string {
	return joinDir(m.o.Dir, string(d.Version)+"_"+d.Name+".down.sql")
}

func (m *Migrator) dirtyInfo(st *state, d *Attempt) *DirtyInfo {
	e := m.dirtyError(st, d)
	down := fmt.Sprintf("`%s`: undo it (runs %s, which must tolerate a partial state)", Command(e.Database, "downto", string(e.Previous)), m.downFile(d))
	switch {
	case e.MissingUp != "":
		down += fmt.Sprintf("; its files are not in the migrations directory: put %s and its down file back first", e.MissingUp)
	case e.MissingDown != "":
		down += "; that file does not exist yet, write it first"
	}
	return &DirtyInfo{Attempt: *d, Downto: e.Previous, Message: e.Error(), WaysOut: []string{
		fmt.Sprintf("`%s`: after you fixed the database by hand (then `%s` if you completed the migration by hand)",
			Command(e.Database, "repair"), Command(e.Database, "mark-complete", string(d.Version))),
		down,
	}}
}

// Status reads the state without locking or creating anything.
func (m *Migrator) Status(ctx context.Context) (*Status, error) {
	st, err := loadState(ctx, m.pool, false)
	if err != nil {
		return nil, err
	}
	out := &Status{Current: "0", Holder: st.holder, Migrations: []MigrationStatus{}}
	if d := st.dirty(); d != nil {
		out.Dirty, out.DirtyMigration = true, m.dirtyInfo(st, d)
	}
	seen := map[Version]bool{}
	for _, mg := range m.migs {
		seen[mg.Version] = true
	}
	all := make([]Version, 0, len(seen))
	for v := range seen {
		all = append(all, v)
	}
	for v := range st.applied {
		if !seen[v] {
			all = append(all, v)
		}
	}
	slices.SortFunc(all, Version.Compare)
	for _, v := range all {
		ms := MigrationStatus{Version: v, LastAttempt: st.last[v]}
		if mg := m.byV[v]; mg != nil {
			ms.Name, ms.HasFile, ms.HasDown = mg.Name, true, mg.DownFile != ""
		} else if a := st.last[v]; a != nil {
			ms.Name = a.Name
		}
		if t, ok := st.appliedAt[v]; ok && st.applied[v] {
			ms.AppliedAt = &t
		}
		a := st.last[v]
		switch {
		case a != nil && a.Dirty:
			ms.State = "dirty"
		case a != nil && a.Running:
			ms.State = "running"
		case st.applied[v]:
			ms.State = "applied"
			if v.Compare(out.Current) > 0 {
				out.Current = v
			}
		case a != nil && a.Died:
			ms.State = "interrupted"
		case a != nil && a.Direction == "up" && a.Success != nil && !*a.Success:
			ms.State = "failed"
		default:
			ms.State = "pending"
		}
		if !st.applied[v] {
			out.Pending++
		}
		out.Migrations = append(out.Migrations, ms)
	}
	return out, nil
}
