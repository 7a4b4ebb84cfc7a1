package dbmigrate

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A restore after a failed upgrade must not erase the record of that
// upgrade: ferry's migration log (what ran, what failed, who repaired)
// and the web UI's audit rows. Restore saves their rows before it starts
// and puts back, in its own transaction, those the backup lacks; a record
// table the backup does not contain at all is left in place.

// RecordTables are ferry's tables whose rows survive a restore.
var RecordTables = []string{LogTable, "ferry_web_actions"}

// savedRecords are the rows of the record tables before the restore, as
// JSON arrays, by table.
type savedRecords struct {
	rows  map[string]string
	count map[string]int
	// notInBackup: record tables the backup lacks. The restore leaves them
	// in place, so all their rows come from after the backup was taken.
	notInBackup map[string]bool
}

func saveRecords(ctx context.Context, pool *pgxpool.Pool) (*savedRecords, error) {
	s := &savedRecords{rows: map[string]string{}, count: map[string]int{}}
	for _, t := range RecordTables {
		var exists bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, "public."+t).Scan(&exists); err != nil {
			return nil, err
		}
		if !exists {
			continue
		}
		var js string
		var n int
		if err := pool.QueryRow(ctx, `SELECT coalesce(json_agg(r ORDER BY r.id), '[]')::text, count(*) FROM public.`+
			pgx.Identifier{t}.Sanitize()+` r`).Scan(&js, &n); err != nil {
			return nil, fmt.Errorf("save %s before the restore: %w", t, err)
		}
		s.rows[t], s.count[t] = js, n
	}
	return s, nil
}

// sql puts the saved rows back into the restored tables: the columns
// both have, rows whose id the backup lacks, and the id sequence past
// them. It never fails the restore: a problem is a WARNING.
func (s *savedRecords) sql() string {
	var b strings.Builder
	for _, t := range RecordTables {
		js, ok := s.rows[t]
		if !ok || s.count[t] == 0 {
			continue
		}
		inner := freeDollarTag(js, "ferry_rows")
		outer := freeDollarTag(js+inner, "ferry_keep")
		backupMax := "SELECT max(id) INTO backup_max FROM public." + t
		if s.notInBackup[t] {
			backupMax = "backup_max := 0"
		}
		fmt.Fprintf(&b, `DO %[4]s
DECLARE
	saved json := %[1]s%[2]s%[1]s;
	cols text;
	backup_max bigint;
BEGIN
	%[5]s;
	SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
	FROM pg_attribute a
	WHERE a.attrelid = 'public.%[3]s'::regclass AND a.attnum > 0 AND NOT a.attisdropped
	  AND a.attname IN (SELECT json_object_keys(saved -> 0));
	EXECUTE format('INSERT INTO public.%[3]s (%%s) SELECT %%s FROM json_populate_recordset(NULL::public.%[3]s, $1) ON CONFLICT (id) DO NOTHING', cols, cols)
		USING saved;
	PERFORM setval(pg_get_serial_sequence('public.%[3]s', 'id'), (SELECT max(id) FROM public.%[3]s));
	-- for the blocks after this one, in this transaction
	PERFORM set_config('ferry.backup_max_%[3]s', coalesce(backup_max, 0)::text, true);
EXCEPTION WHEN others THEN
	RAISE WARNING 'ferry: could not keep the rows of %[3]s: %%', SQLERRM;
END
%[4]s;
`, inner, js, t, outer, backupMax)
	}
	// Each in its own block: a failure there must not undo the rows put back.
	if s.count[LogTable] > 0 {
		b.WriteString(restoreStatesDirtySQL)
	}
	if s.count["ferry_web_actions"] > 0 {
		b.WriteString(noReusedMigrationIDsSQL)
	}
	return b.String()
}

// noReusedMigrationIDsSQL moves the batched migrations' id sequence past
// the ids the kept audit rows name: a migration queued after the restore
// must not take the id of one the backup lacks, or its page would show
// that one's actions as its own. Its own block: a failure here must not
// undo the rows put back.
const noReusedMigrationIDsSQL = `DO $ferry_ids$
DECLARE
	seq text;
	used bigint;
	last bigint;
BEGIN
	IF to_regclass('public.batched_background_migrations') IS NULL THEN
		RETURN;
	END IF;
	seq := pg_get_serial_sequence('public.batched_background_migrations', 'id');
	used := (SELECT max(migration_id) FROM public.ferry_web_actions);
	IF seq IS NOT NULL AND used IS NOT NULL THEN
		EXECUTE format('SELECT last_value FROM %s', seq) INTO last;
		IF used > last THEN -- only ever forward
			PERFORM setval(seq, used);
		END IF;
	END IF;
EXCEPTION WHEN others THEN
	RAISE WARNING 'ferry: could not move the batched migrations'' ids past the kept audit rows: %', SQLERRM;
END
$ferry_ids$;
`

// restoreStatesDirtySQL makes, in the restore's transaction, each
// version's dirty state the backup's: the rows put back (ids past the
// backup's) record a history the restore replaced. An attempt left dirty
// after the backup was taken is cleared (the restore undid it, a repair
// row says so); a dirty state the backup holds but a later repair
// cleared is recorded again (the restore brought the half-done work
// back).
const restoreStatesDirtySQL = `DO $ferry_dirty$
DECLARE
	backup_max bigint := current_setting('ferry.backup_max_ferry_migration_log', true)::bigint;
BEGIN
	IF backup_max IS NULL THEN
		RETURN; -- the rows were not put back: nothing to restate
	END IF;
	WITH l AS (
	  SELECT version, id, name, direction, id > backup_max AS later,
	         direction IN ('up', 'down') AND ((finished_at IS NULL AND no_transaction) OR (success IS FALSE AND dirty)) AS dirty
	  FROM public.ferry_migration_log),
	last_all AS (SELECT DISTINCT ON (version) * FROM l ORDER BY version, id DESC),
	last_backup AS (SELECT DISTINCT ON (version) * FROM l WHERE NOT later ORDER BY version, id DESC)
	INSERT INTO public.ferry_migration_log (version, name, direction, no_transaction, finished_at, success, dirty, error)
	SELECT a.version, a.name,
	       CASE WHEN a.dirty THEN 'repair' ELSE b.direction END, NOT a.dirty, clock_timestamp(), a.dirty, NOT a.dirty,
	       CASE WHEN a.dirty THEN 'cleared by the restore of a backup taken before ' || a.direction || ' attempt #' || a.id
	            ELSE 'dirty again: the restored backup was taken while ' || b.direction || ' attempt #' || b.id || ' had left it half done' END
	FROM last_all a LEFT JOIN last_backup b ON b.version = a.version
	WHERE a.later AND a.dirty IS DISTINCT FROM coalesce(b.dirty, false);
EXCEPTION WHEN others THEN
	RAISE WARNING 'ferry: could not restate the dirty state of the restored migrations: %', SQLERRM;
END
$ferry_dirty$;
`

// freeDollarTag is a dollar-quote tag, made of name, that does not occur in s.
func freeDollarTag(s, name string) string {
	tag := "$" + name + "$"
	for i := 0; strings.Contains(s, tag); i++ {
		tag = fmt.Sprintf("$%s%d$", name, i)
	}
	return tag
}

// beforeCommit inserts extra before the final COMMIT of a pg_restore
// script's tail.
func beforeCommit(tail []byte, extra string) []byte {
	i := bytes.LastIndex(tail, []byte("\nCOMMIT;\n"))
	if i < 0 || extra == "" {
		return tail
	}
	out := append([]byte{}, tail[:i+1]...)
	out = append(out, extra...)
	return append(out, tail[i+1:]...)
}

// isRecordRelation: a record table or its id sequence, which a restore
// keeps even when the backup lacks it.
func isRecordRelation(schema, name string) bool {
	if schema != "public" {
		return false
	}
	for _, t := range RecordTables {
		if name == t || name == t+"_id_seq" {
			return true
		}
	}
	return false
}

// Session is a database session of another ferry process.
type Session struct {
	PID             int       `json:"pid"`
	ApplicationName string    `json:"application_name"`
	ClientAddr      string    `json:"client_addr,omitempty"`
	BackendStart    time.Time `json:"backend_start"`
}

func (s Session) String() string {
	out := fmt.Sprintf("pid %d (%s", s.PID, s.ApplicationName)
	if s.ClientAddr != "" {
		out += " from " + s.ClientAddr
	}
	return out + ")"
}

// sessionQuietAfter is how long a ferry-named session may have been idle
// and still count as a ferry process. A running worker's engine touches
// the database every few seconds; a PgBouncer server connection keeps the
// application_name of the last client it served long after that client
// (a ferry command that finished) is gone.
const sessionQuietAfter = time.Minute

// ferrySessions lists the sessions on the database named by ferry
// (application_name ferry...) other than pool's own, busy or idle for less
// than quietAfter: workers that go on running while their tables are
// replaced under them.
func ferrySessions(ctx context.Context, pool *pgxpool.Pool, quietAfter time.Duration) ([]Session, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	own := []int64{int64(conn.Conn().PgConn().PID())}
	for _, c := range pool.AcquireAllIdle(ctx) {
		own = append(own, int64(c.Conn().PgConn().PID()))
		defer c.Release()
	}
	defer conn.Release()
	rows, err := conn.Query(ctx, `SELECT pid, application_name, coalesce(host(client_addr), ''), coalesce(backend_start, 'epoch')
		FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'ferry%' AND pid <> ALL($1::bigint[])
		  AND (state IS DISTINCT FROM 'idle' OR state_change > now() - make_interval(secs => $2))
		ORDER BY pid`, own, quietAfter.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list ferry sessions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Session, error) {
		var s Session
		return s, r.Scan(&s.PID, &s.ApplicationName, &s.ClientAddr, &s.BackendStart)
	})
}
