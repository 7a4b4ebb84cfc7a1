package dbmigrate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// BackupOptions configure [Backup] and [Restore].
type BackupOptions struct {
	Logger *zap.Logger
	// PgBin is the directory of pg_dump, pg_restore and psql. Default: the Debian
	// directory matching the server's major version
	// (/usr/lib/postgresql/<major>/bin) if it exists, else $PATH.
	PgBin string
	// Yes confirms a destructive restore; without it Restore only plans.
	Yes bool
	// ForceOtherDatabase restores a backup taken from another database
	// (by the archive's name or the sidecar's cluster identifier).
	ForceOtherDatabase bool
	// LockTimeout: restore holds the migration lock so no migrator runs
	// meanwhile.
	LockTimeout time.Duration
	// Name is ferry's name for the database ("main", "ci"): Backup
	// records it in the sidecar, Restore refuses a backup of another
	// named database unless ForceOtherDatabase. Empty: not recorded or
	// checked (by name; the archive's own database is always checked).
	Name string
	// Progress, when set, is called as tables are dumped or restored:
	// done of total tables with data.
	Progress func(done, total int64)
}

// BackupMeta is the sidecar FILE.meta.json that ties a dump to its database.
type BackupMeta struct {
	Database string `json:"database"`
	// Name is ferry's name for the database (databases: in the config;
	// "main" is DATABASE_URL's).
	Name             string    `json:"ferry_database,omitempty"`
	SystemIdentifier string    `json:"system_identifier,omitempty"`
	ServerVersion    int       `json:"server_version_num"`
	CreatedAt        time.Time `json:"created_at"`
	Host             string    `json:"host"`
	Tool             string    `json:"tool"`
	Size             int64     `json:"size"`
	SHA256           string    `json:"sha256,omitempty"`
	Relations        int       `json:"relations"`
	// Previous is where the backup that was at the same path before went
	// ([PreviousPath], with its sidecar if it had one); "" when there was
	// none.
	Previous string `json:"-"`
	// PreviousRemoved: a copy kept from the backup before was removed.
	PreviousRemoved bool `json:"-"`
}

// MetaPath is where the sidecar of a dump lives.
func MetaPath(file string) string { return file + ".meta.json" }

type dbInfo struct {
	name string // current_database()
	// connDB is the dbname the connection asked for, which pg_dump writes
	// into the archive's header: a PgBouncer alias may differ from name.
	connDB   string
	sysID    string
	version  int
	connArgs string
	env      []string
}

func inspect(ctx context.Context, pool *pgxpool.Pool) (*dbInfo, error) {
	// pg_dump and pg_restore keep session state (SETs, a snapshot across
	// transactions), which a transaction pooler does not keep.
	if err := requireSession(ctx, pool); err != nil {
		return nil, err
	}
	in := &dbInfo{}
	if err := pool.QueryRow(ctx, `SELECT current_database(), current_setting('server_version_num')::int`).Scan(&in.name, &in.version); err != nil {
		return nil, err
	}
	// Needs superuser or pg_monitor-like rights; optional.
	_ = pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&in.sysID)
	cc := pool.Config().ConnConfig
	in.connDB = cc.Database
	ssl := "disable"
	if cc.TLSConfig != nil {
		ssl = "require"
	}
	// The password goes through the environment, never argv (ps shows argv).
	in.connArgs = fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s",
		connQuote(cc.Host), cc.Port, connQuote(cc.User), connQuote(cc.Database), ssl)
	in.env = append(os.Environ(), "PGPASSWORD="+cc.Password, "PGAPPNAME=ferry db")
	return in, nil
}

// names reports whether db names this database.
func (in *dbInfo) names(db string) bool { return db == in.name || (db != "" && db == in.connDB) }

func connQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func tool(name, bin string, serverVersion int) string {
	if bin != "" {
		return filepath.Join(bin, name)
	}
	p := filepath.Join("/usr/lib/postgresql", strconv.Itoa(serverVersion/10000), "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return name
}

func runTool(ctx context.Context, env []string, path string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	// Stderr left nil: Output keeps it in the *exec.ExitError, where
	// badArchive reads it.
	out, err := cmd.Output()
	if err != nil {
		var msg string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		return out, fmt.Errorf("%w: %s: %w: %s", ErrTool, filepath.Base(path), err, msg)
	}
	return out, nil
}

// Backup dumps the whole database (ferry's own tables included) to file in
// pg_dump's custom format and writes the sidecar [BackupMeta].
func Backup(ctx context.Context, pool *pgxpool.Pool, file string, o BackupOptions) (*BackupMeta, error) {
	if dir := filepath.Dir(file); dir != "" {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%w: cannot write %s: directory %s does not exist", ErrBadBackup, file, dir)
		}
	}
	if fi, err := os.Stat(file); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is a directory", ErrBadBackup, file)
	}
	in, err := inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	pgDump := tool("pg_dump", o.PgBin, in.version)
	// Dumped beside file and moved in place once complete: a backup that
	// fails leaves the one before it as it was.
	tmp := file + ".partial"
	defer os.Remove(tmp)
	// Room for the new dump: the copy before the one at file goes (file
	// itself stays until the new one is complete).
	removed := false
	if _, err := os.Stat(file); err == nil {
		for _, p := range []string{PreviousPath(file), MetaPath(PreviousPath(file))} {
			err := os.Remove(p)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			removed = removed || err == nil
		}
	}
	if err := dumpWithProgress(ctx, pool, in, pgDump, tmp, o.Progress); err != nil {
		return nil, err
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return nil, err
	}
	toc, err := readTOC(ctx, in, tmp, o.PgBin)
	if err != nil {
		return nil, err
	}
	sum, err := fileSHA256(tmp)
	if err != nil {
		return nil, err
	}
	meta := &BackupMeta{Database: in.name, Name: o.Name, SystemIdentifier: in.sysID, ServerVersion: in.version,
		CreatedAt: time.Now().UTC(), Host: hostname(), Tool: pgDump, Size: fi.Size(), SHA256: sum, Relations: len(toc.relations)}
	if meta.Previous, err = keepPrevious(file); err != nil {
		return nil, err
	}
	meta.PreviousRemoved = removed
	if err := os.Rename(tmp, file); err != nil {
		return nil, err
	}
	data, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(MetaPath(file), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	return meta, nil
}

// keepPrevious moves an existing backup at file (and its sidecar) to
// PreviousPath(file) and returns that name, "" when there was none: an
// operator re-running the backup step after a failed upgrade must not lose
// the backup taken before it. One previous copy only (Backup removed the
// one before), so a backup run on a schedule to a fixed name does not
// fill the disk.
func keepPrevious(file string) (string, error) {
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	prev := PreviousPath(file)
	if err := os.Rename(file, prev); err != nil {
		return "", err
	}
	if err := os.Rename(MetaPath(file), MetaPath(prev)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return prev, fmt.Errorf("the previous backup is now %s, but its %s could not follow: %w", prev, MetaPath(file), err)
	}
	return prev, nil
}

// PreviousPath is where [Backup] keeps the backup it replaced at file.
func PreviousPath(file string) string { return file + ".previous" }

// Object is a database object that [Restore] drops because the backup
// does not contain it: a table, view, materialized view, sequence, foreign
// table, type, domain, function, procedure, aggregate, schema, extension,
// event trigger, or a foreign key on a table that the backup contains.
type Object struct {
	Kind   string `json:"kind"` // TABLE, VIEW, ..., TYPE, DOMAIN, FUNCTION, PROCEDURE, AGGREGATE, SCHEMA, EXTENSION, EVENT TRIGGER, FK CONSTRAINT
	Schema string `json:"schema,omitempty"`
	// Name; for functions, procedures and aggregates it includes the
	// argument types, as pg_dump names them: f(integer, text).
	Name string `json:"name"`
	// Table is the table of an FK CONSTRAINT.
	Table string `json:"table,omitempty"`

	catalog string // pg_class, pg_proc, ...: where oid lives
	oid     uint32
	drop    string // the DROP statement
}

// Relation is the former name of [Object].
//
// Deprecated: use Object.
type Relation = Object

func (o Object) String() string {
	switch o.Kind {
	case "SCHEMA", "EXTENSION", "EVENT TRIGGER":
		return strings.ToLower(o.Kind) + " " + displayIdent(o.Name)
	case "FK CONSTRAINT":
		return "foreign key " + displayIdent(o.Name) + " on table " + displayIdent(o.Schema) + "." + displayIdent(o.Table)
	case "FUNCTION", "PROCEDURE", "AGGREGATE":
		return strings.ToLower(o.Kind) + " " + displayIdent(o.Schema) + "." + o.Name
	}
	return strings.ToLower(o.Kind) + " " + displayIdent(o.Schema) + "." + displayIdent(o.Name)
}

var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// displayIdent quotes an identifier only when it needs it.
func displayIdent(s string) string {
	if plainIdent.MatchString(s) {
		return s
	}
	return pgx.Identifier{s}.Sanitize()
}

// toc is what a dump contains, by kind of object; keys are
// "<schema> <tag>" as `pg_restore --list` prints them (owner removed).
type toc struct {
	dbname    string
	data      int64 // TABLE DATA entries
	relations map[[2]string]bool
	objects   map[string]map[[2]string]bool // "type", "func", "schema", "ext", "evt", "fk"
}

func (t *toc) has(class, schema, name string) bool { return t.objects[class][[2]string{schema, name}] }

var tocHeaderDB = regexp.MustCompile(`^;\s+dbname:\s+(.*)$`)
var tocEntry = regexp.MustCompile(`^\d+; \d+ \d+ (.*)$`)

// tocKinds maps the entry descriptions of `pg_restore --list` to the
// classes Restore compares; longer descriptions come before their
// prefixes, and "" marks entries that are not objects of their own.
var tocKinds = []struct{ desc, class string }{
	{"TABLE DATA ", ""}, {"SEQUENCE SET ", ""}, {"SEQUENCE OWNED BY ", ""}, {"MATERIALIZED VIEW DATA ", ""},
	{"TABLE ", "rel"}, {"VIEW ", "rel"}, {"SEQUENCE ", "rel"}, {"MATERIALIZED VIEW ", "rel"}, {"FOREIGN TABLE ", "rel"},
	{"TYPE ", "type"}, {"DOMAIN ", "type"},
	{"FUNCTION ", "func"}, {"PROCEDURE ", "func"}, {"AGGREGATE ", "func"},
	{"SCHEMA ", "schema"}, {"EXTENSION ", "ext"}, {"EVENT TRIGGER ", "evt"}, {"FK CONSTRAINT ", "fk"},
}

// readTOC parses `pg_restore --list`.
func readTOC(ctx context.Context, in *dbInfo, file, bin string) (*toc, error) {
	out, err := runTool(ctx, in.env, tool("pg_restore", bin, in.version), "--list", file)
	if err != nil {
		return nil, err
	}
	t := &toc{relations: map[[2]string]bool{}, objects: map[string]map[[2]string]bool{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := tocHeaderDB.FindStringSubmatch(line); m != nil {
			t.dbname = strings.TrimSpace(m[1])
			continue
		}
		m := tocEntry.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rest := m[1]
		if strings.HasPrefix(rest, "TABLE DATA ") {
			t.data++
		}
		var desc, class string
		for _, k := range tocKinds {
			if strings.HasPrefix(rest, k.desc) {
				desc, class = k.desc, k.class
				break
			}
		}
		if class == "" {
			continue
		}
		// "<schema> <tag> <owner>" ("-" for objects outside schemas; the
		// owner is empty for extensions); tags may contain spaces.
		f := strings.TrimPrefix(rest, desc)
		schema, f, _ := strings.Cut(f, " ")
		if i := strings.LastIndexByte(f, ' '); i >= 0 {
			f = f[:i]
		}
		if schema == "-" {
			schema = ""
		}
		key := [2]string{schema, f}
		if class == "rel" {
			t.relations[key] = true
		}
		if t.objects[class] == nil {
			t.objects[class] = map[[2]string]bool{}
		}
		t.objects[class][key] = true
	}
	return t, sc.Err()
}

// userObject filters catalog rows to objects a user created: not built in
// (OIDs below FirstNormalObjectId), not part of an extension, not an
// internal part of another object (array types, range constructors,
// identity sequences), and not in a system schema.
const userObject = `%[1]s.oid >= 16384
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '%[2]s'::regclass AND d.objid = %[1]s.oid AND d.deptype IN ('e', 'i'))`

const userSchema = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'`

// planDrops lists, in drop order, the objects of the database that the
// dump does not contain. Dropping an object that the dump does contain
// would be harmless (pg_restore recreates it); missing one that it does
// not would make the next upgrade fail with "already exists".
func planDrops(ctx context.Context, pool *pgxpool.Pool, t *toc) ([]Object, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// As pg_dump: with an empty search_path, format_type() and regprocedure
	// qualify every type outside pg_catalog, so signatures match its tags.
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', '', true)`); err != nil {
		return nil, err
	}
	var out []Object
	collect := func(query string, keep func(o *Object) bool) error {
		rows, err := tx.Query(ctx, query)
		if err != nil {
			return err
		}
		objs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Object, error) {
			var o Object
			return o, r.Scan(&o.Kind, &o.Schema, &o.Name, &o.Table, &o.catalog, &o.oid, &o.drop)
		})
		if err != nil {
			return err
		}
		for i := range objs {
			if !keep(&objs[i]) {
				out = append(out, objs[i])
			}
		}
		return nil
	}
	steps := []struct {
		query string
		keep  func(o *Object) bool
	}{
		{`SELECT 'EVENT TRIGGER', '', e.evtname::text, '', 'pg_event_trigger', e.oid,
				'DROP EVENT TRIGGER IF EXISTS ' || quote_ident(e.evtname)
			FROM pg_catalog.pg_event_trigger e WHERE ` + fmt.Sprintf(userObject, "e", "pg_event_trigger") + ` ORDER BY 3`,
			func(o *Object) bool { return t.has("evt", "", o.Name) }},
		// Foreign keys between tables that stay: pg_restore --clean drops
		// and recreates those tables, which an unknown foreign key would
		// block ("cannot drop constraint ... because other objects depend
		// on it"). Other extra indexes, triggers, columns and constraints
		// of those tables vanish with the recreated table.
		{`SELECT 'FK CONSTRAINT', n.nspname::text, c.conname::text, r.relname::text, 'pg_constraint', c.oid,
				'ALTER TABLE IF EXISTS ' || quote_ident(n.nspname) || '.' || quote_ident(r.relname) || ' DROP CONSTRAINT IF EXISTS ' || quote_ident(c.conname)
			FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
			WHERE c.contype = 'f' AND c.conparentid = 0 AND ` + userSchema + ` AND ` + fmt.Sprintf(userObject, "c", "pg_constraint") + ` ORDER BY 2, 4, 3`,
			func(o *Object) bool {
				return !t.relations[[2]string{o.Schema, o.Table}] || t.has("fk", o.Schema, o.Table+" "+o.Name)
			}},
		{`SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
				n.nspname::text, c.relname::text, '', 'pg_class', c.oid,
				'DROP ' || CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END
				|| ' IF EXISTS ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || ' CASCADE'
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND ` + userSchema + ` AND ` + fmt.Sprintf(userObject, "c", "pg_class") + `
			ORDER BY CASE WHEN c.relkind IN ('v', 'm') THEN 0 WHEN c.relkind = 'S' THEN 2 ELSE 1 END, 2, 3`,
			func(o *Object) bool {
				return t.relations[[2]string{o.Schema, o.Name}] || isRecordRelation(o.Schema, o.Name)
			}},
		// Signatures as pg_dump's tags: name(argtype, ...), input
		// arguments only, "(*)" for an aggregate without arguments.
		{`SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, n.nspname::text,
				p.proname || '(' || CASE WHEN p.prokind = 'a' AND p.pronargs = 0 THEN '*' ELSE coalesce(
					(SELECT string_agg(pg_catalog.format_type(a.t, NULL), ', ' ORDER BY a.i) FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)), '') END || ')',
				'', 'pg_proc', p.oid,
				'DROP ' || CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END || ' IF EXISTS '
				|| CASE WHEN p.prokind = 'a' AND p.pronargs = 0 THEN quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(*)' ELSE p.oid::regprocedure::text END
				|| ' CASCADE'
			FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			WHERE ` + userSchema + ` AND ` + fmt.Sprintf(userObject, "p", "pg_proc") + `
			ORDER BY CASE p.prokind WHEN 'a' THEN 0 ELSE 1 END, 2, 3`,
			func(o *Object) bool { return t.has("func", o.Schema, o.Name) }},
		// Enums, composites, ranges, base types and domains; not array,
		// multirange or table row types (internal parts of other objects).
		{`SELECT CASE ty.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname::text, ty.typname::text, '', 'pg_type', ty.oid,
				'DROP ' || CASE ty.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END || ' IF EXISTS ' || quote_ident(n.nspname) || '.' || quote_ident(ty.typname) || ' CASCADE'
			FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
			WHERE ty.typtype IN ('b', 'c', 'd', 'e', 'r')
			  AND (ty.typrelid = 0 OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = ty.typrelid) = 'c')
			  AND NOT (ty.typelem <> 0 AND EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.oid = ty.typelem AND e.typarray = ty.oid))
			  AND ` + userSchema + ` AND ` + fmt.Sprintf(userObject, "ty", "pg_type") + `
			ORDER BY CASE ty.typtype WHEN 'd' THEN 0 ELSE 1 END, 2, 3`,
			func(o *Object) bool { return t.has("type", o.Schema, o.Name) }},
		{`SELECT 'EXTENSION', '', x.extname::text, '', 'pg_extension', x.oid, 'DROP EXTENSION IF EXISTS ' || quote_ident(x.extname) || ' CASCADE'
			FROM pg_catalog.pg_extension x WHERE ` + fmt.Sprintf(userObject, "x", "pg_extension") + ` ORDER BY 3`,
			func(o *Object) bool { return t.has("ext", "", o.Name) }},
		// Never public (built in, OID 2200), even when the dump has no
		// entry for it.
		{`SELECT 'SCHEMA', '', n.nspname::text, '', 'pg_namespace', n.oid, 'DROP SCHEMA IF EXISTS ' || quote_ident(n.nspname) || ' CASCADE'
			FROM pg_catalog.pg_namespace n WHERE ` + userSchema + ` AND ` + fmt.Sprintf(userObject, "n", "pg_namespace") + ` ORDER BY 3`,
			func(o *Object) bool { return t.has("schema", "", o.Name) }},
	}
	for _, s := range steps {
		if err := collect(s.query, s.keep); err != nil {
			return nil, fmt.Errorf("list objects not in the backup: %w", err)
		}
	}
	return out, nil
}

// checkArchive fails with an os.ErrNotExist error for a missing file and
// [ErrBadBackup] for one that is not a pg_dump custom-format archive.
func checkArchive(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return err
	} else if fi.IsDir() {
		return fmt.Errorf("%w: %s is a directory", ErrBadBackup, file)
	}
	magic := make([]byte, 5)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "PGDMP" {
		return fmt.Errorf("%w: %s is not a pg_dump custom-format archive (make one with `ferry db backup`)", ErrBadBackup, file)
	}
	return nil
}

// RestoreResult says what [Restore] did (or, without Yes, would do).
type RestoreResult struct {
	Database string      `json:"database"`
	Meta     *BackupMeta `json:"backup,omitempty"`
	Dropped  []Object    `json:"dropped"`
	Restored bool        `json:"restored"`
	// Connected are other ferry sessions on the database when the
	// restore started: workers whose tables it replaces under them.
	Connected []Session `json:"connected_ferry_sessions,omitempty"`
	// Kept counts, per record table ([RecordTables]), the rows from
	// before the restore that it kept.
	Kept map[string]int `json:"kept_rows,omitempty"`
}

// Restore puts the database back to the state in file.
//
// Before it changes anything it checks the whole file, and fails with
// [ErrBadBackup] (or [ErrOtherDatabase]) when any check fails: a pg_dump
// custom-format archive, matching the size and SHA-256 its sidecar
// recorded, readable to the end (data included), a backup of the
// configured database by the archive's own header (the sidecar may only
// add a refusal, by cluster system identifier; ForceOtherDatabase skips
// the name and cluster checks), and with ferry tables no newer than this
// binary knows.
//
// Then, in ONE transaction, it drops every user object the dump does not
// contain (tables, views, materialized views, sequences, foreign tables,
// types, domains, functions, procedures, aggregates, schemas, extensions,
// event triggers, and foreign keys added to tables the dump contains), so
// objects created by a failed upgrade cannot make the next one fail with
// "already exists", and runs pg_restore --clean --if-exists --no-owner's
// script, which drops and recreates each table of the dump (columns,
// indexes, triggers and constraints a failed upgrade added go with it).
// A failure at any point rolls all of it back ([ErrRestoreFailed]).
// Built-in objects, objects that belong to an extension and internal
// parts of other objects (array types, identity sequences) are never
// dropped. The rows of ferry's record tables ([RecordTables]) survive:
// those the backup lacks are put back in the same transaction, and a
// record table the backup does not contain is not dropped. Without Yes it
// returns the plan (with the other ferry sessions connected) and
// [ErrNotConfirmed].
func Restore(ctx context.Context, pool *pgxpool.Pool, file string, o BackupOptions) (*RestoreResult, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := checkArchive(file); err != nil {
		return nil, err
	}
	in, err := inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	res := &RestoreResult{Database: in.name}
	t, meta, err := checkArchiveFull(ctx, in, file, o)
	res.Meta = meta
	if err != nil {
		return res, err
	}
	if res.Dropped, err = planDrops(ctx, pool, t); err != nil {
		return res, err
	}
	if res.Connected, err = ferrySessions(ctx, pool, sessionQuietAfter); err != nil {
		return res, err
	}
	if !o.Yes {
		return res, ErrNotConfirmed
	}

	c, err := acquire(ctx, pool, "ferry db restore host="+hostname(), o.LockTimeout)
	if err != nil {
		return res, err
	}
	defer c.release(ctx)
	// Under the migration lock: no migrator adds to the log meanwhile.
	saved, err := saveRecords(ctx, pool)
	if err != nil {
		return res, err
	}
	saved.notInBackup = map[string]bool{}
	for _, rt := range RecordTables {
		saved.notInBackup[rt] = !t.relations[[2]string{"public", rt}]
	}
	var progress func(int64)
	if o.Progress != nil {
		progress = func(done int64) { o.Progress(done, t.data) }
	}
	if err := applyRestore(ctx, in, file, res.Dropped, saved.sql(), o.PgBin, progress); err != nil {
		return res, err
	}
	res.Kept = saved.count
	for _, r := range res.Dropped {
		o.Logger.Info("dropped object not in backup", zap.Stringer("object", r))
	}
	res.Restored = true
	return res, nil
}
