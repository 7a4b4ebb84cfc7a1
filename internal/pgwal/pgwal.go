// Package pgwal reads PostgreSQL's WAL archiving backlog: the segments
// written but not yet archived. A backlog means the archiver (and so
// point-in-time recovery, and standbys fed from the archive) is falling
// behind, and migrations, which write a lot of WAL, make it worse; both
// engines hold while it is above a limit (GitLab's WriteAheadLog
// indicator, 42 segments).
package pgwal

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// DefaultMaxPending is GitLab's limit on segments waiting for archival.
const DefaultMaxPending = 42

// Archiver is the relation [PendingSegments] reads: one row with
// archive_mode, current_wal (the segment being written) and
// last_archived_wal. Tests point it at a table of fabricated rows.
const Archiver = `(SELECT current_setting('archive_mode') AS archive_mode,
	pg_walfile_name(pg_current_wal_insert_lsn()) AS current_wal, last_archived_wal
	FROM pg_catalog.pg_stat_archiver) AS archiver`

// Queryer is a pool, a connection or a transaction.
type Queryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// PendingSegments returns how many WAL segments wait for archival, read
// from relation (normally [Archiver]); ok is false when archiving is off
// or nothing was archived yet, when there is no backlog to speak of.
func PendingSegments(ctx context.Context, db Queryer, relation string) (n int64, ok bool, err error) {
	var mode string
	var cur, last *string
	if err := db.QueryRow(ctx, `SELECT archive_mode, current_wal, last_archived_wal FROM `+relation).Scan(&mode, &cur, &last); err != nil {
		return 0, false, err
	}
	if mode == "off" || cur == nil || last == nil {
		return 0, false, nil
	}
	n, ok = Pending(*cur, *last)
	return n, ok, nil
}

// Pending is GitLab's arithmetic on two WAL file names (8 hex digits each
// of timeline, log and segment): (log - log') * 256 + (seg - seg'). 256
// segments of 16 MB make a log. ok is false for names it cannot read.
func Pending(current, archived string) (int64, bool) {
	cl, cs, ok1 := logSeg(current)
	al, as, ok2 := logSeg(archived)
	if !ok1 || !ok2 {
		return 0, false
	}
	return max((cl-al)*256+(cs-as), 0), true
}

func logSeg(name string) (log, seg int64, ok bool) {
	if len(name) < 24 {
		return 0, 0, false
	}
	l, err1 := strconv.ParseInt(name[8:16], 16, 64)
	s, err2 := strconv.ParseInt(name[16:24], 16, 64)
	return l, s, err1 == nil && err2 == nil
}
