package dbmigrate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
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
	// PgBin is the directory of pg_dump/pg_restore. Default: the Debian
	// directory matching the server's major version
	// (/usr/lib/postgresql/<major>/bin) if it exists, else $PATH.
	PgBin string
	// Yes confirms a destructive restore; without it Restore only plans.
	Yes bool
	// ForceOtherDatabase restores a backup taken from another database.
	ForceOtherDatabase bool
	// LockTimeout: restore holds the migration lock so no migrator runs
	// meanwhile.
	LockTimeout time.Duration
}

// BackupMeta is the sidecar FILE.meta.json that ties a dump to its database.
type BackupMeta struct {
	Database         string    `json:"database"`
	SystemIdentifier string    `json:"system_identifier,omitempty"`
	ServerVersion    int       `json:"server_version_num"`
	CreatedAt        time.Time `json:"created_at"`
	Host             string    `json:"host"`
	Tool             string    `json:"tool"`
	Size             int64     `json:"size"`
	Relations        int       `json:"relations"`
}

// MetaPath is where the sidecar of a dump lives.
func MetaPath(file string) string { return file + ".meta.json" }

type dbInfo struct {
	name     string
	sysID    string
	version  int
	connArgs string
	env      []string
}

func inspect(ctx context.Context, pool *pgxpool.Pool) (*dbInfo, error) {
	in := &dbInfo{}
	if err := pool.QueryRow(ctx, `SELECT current_database(), current_setting('server_version_num')::int`).Scan(&in.name, &in.version); err != nil {
		return nil, err
	}
	// Needs superuser or pg_monitor-like rights; optional.
	_ = pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&in.sysID)
	cc := pool.Config().ConnConfig
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
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s: %v: %s", ErrTool, filepath.Base(path), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Backup dumps the whole database (ferry's own tables included) to file in
// pg_dump's custom format and writes the sidecar [BackupMeta].
func Backup(ctx context.Context, pool *pgxpool.Pool, file string, o BackupOptions) (*BackupMeta, error) {
	in, err := inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	pgDump := tool("pg_dump", o.PgBin, in.version)
	if _, err := runTool(ctx, in.env, pgDump, "--format=custom", "--file="+file, "--dbname="+in.connArgs); err != nil {
		return nil, err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	toc, err := readTOC(ctx, in, file, o.PgBin)
	if err != nil {
		return nil, err
	}
	meta := &BackupMeta{Database: in.name, SystemIdentifier: in.sysID, ServerVersion: in.version,
		CreatedAt: time.Now().UTC(), Host: hostname(), Tool: pgDump, Size: fi.Size(), Relations: len(toc.relations)}
	data, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(MetaPath(file), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	return meta, nil
}

// Relation is a table, view or sequence.
type Relation struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	Kind   string `json:"kind"` // TABLE, VIEW, MATERIALIZED VIEW, SEQUENCE, FOREIGN TABLE
}

func (r Relation) String() string {
	return strings.ToLower(r.Kind) + " " + displayIdent(r.Schema) + "." + displayIdent(r.Name)
}

var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// displayIdent quotes an identifier only when it needs it.
func displayIdent(s string) string {
	if plainIdent.MatchString(s) {
		return s
	}
	return pgx.Identifier{s}.Sanitize()
}

type toc struct {
	dbname    string
	relations map[[2]string]bool
}

var tocHeaderDB = regexp.MustCompile(`^;\s+dbname:\s+(.*)$`)
var tocEntry = regexp.MustCompile(`^\d+; \d+ \d+ (.*)$`)

// readTOC parses `pg_restore --list`.
func readTOC(ctx context.Context, in *dbInfo, file, bin string) (*toc, error) {
	out, err := runTool(ctx, in.env, tool("pg_restore", bin, in.version), "--list", file)
	if err != nil {
		return nil, err
	}
	t := &toc{relations: map[[2]string]bool{}}
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
		var kind string
		for _, k := range []string{"TABLE DATA ", "SEQUENCE SET ", "SEQUENCE OWNED BY ", "MATERIALIZED VIEW DATA ",
			"TABLE ", "VIEW ", "SEQUENCE ", "MATERIALIZED VIEW ", "FOREIGN TABLE "} {
			if strings.HasPrefix(rest, k) {
				kind = k
				break
			}
		}
		switch kind {
		case "TABLE ", "VIEW ", "SEQUENCE ", "MATERIALIZED VIEW ", "FOREIGN TABLE ":
		default:
			continue
		}
		// "<schema> <name> <owner>"; names may contain spaces.
		f := strings.TrimPrefix(rest, kind)
		schema, f, _ := strings.Cut(f, " ")
		if i := strings.LastIndexByte(f, ' '); i > 0 {
			f = f[:i]
		}
		t.relations[[2]string{schema, f}] = true
	}
	return t, sc.Err()
}

// RestoreResult says what [Restore] did (or, without Yes, would do).
type RestoreResult struct {
	Database string      `json:"database"`
	Meta     *BackupMeta `json:"backup,omitempty"`
	Dropped  []Relation  `json:"dropped"`
	Restored bool        `json:"restored"`
}

// Restore puts the database back to the state in file. It refuses a dump
// of another database (by name, and by system identifier when both are
// known) unless ForceOtherDatabase. It first drops every table, view and
// sequence that the dump does not contain, so that objects created by a
// failed upgrade cannot make the next one fail with "relation already
// exists"; then pg_restore --clean --if-exists --no-owner replaces the
// rest, in one transaction. Without Yes it returns the plan and
// [ErrNotConfirmed].
func Restore(ctx context.Context, pool *pgxpool.Pool, file string, o BackupOptions) (*RestoreResult, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	in, err := inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	res := &RestoreResult{Database: in.name}
	if data, err := os.ReadFile(MetaPath(file)); err == nil {
		res.Meta = &BackupMeta{}
		if err := json.Unmarshal(data, res.Meta); err != nil {
			return nil, fmt.Errorf("%s: %w", MetaPath(file), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	t, err := readTOC(ctx, in, file, o.PgBin)
	if err != nil {
		return nil, err
	}
	from := t.dbname
	if res.Meta != nil {
		from = res.Meta.Database
	}
	if !o.ForceOtherDatabase {
		if from != in.name {
			return res, fmt.Errorf("%w: %s is a backup of database %q, but the configured database is %q; pass --force-other-database to restore it anyway",
				ErrOtherDatabase, file, from, in.name)
		}
		if res.Meta != nil && res.Meta.SystemIdentifier != "" && in.sysID != "" && res.Meta.SystemIdentifier != in.sysID {
			return res, fmt.Errorf("%w: %s was taken on PostgreSQL cluster %s, but the configured database %q is on cluster %s; pass --force-other-database to restore it anyway",
				ErrOtherDatabase, file, res.Meta.SystemIdentifier, in.name, in.sysID)
		}
	}
	rows, err := pool.Query(ctx, `SELECT n.nspname, c.relname, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
			WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
		  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`)
	if err != nil {
		return nil, err
	}
	cur, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Relation, error) {
		var rel Relation
		return rel, r.Scan(&rel.Schema, &rel.Name, &rel.Kind)
	})
	if err != nil {
		return nil, err
	}
	rank := map[string]int{"VIEW": 0, "MATERIALIZED VIEW": 0, "FOREIGN TABLE": 1, "TABLE": 1, "SEQUENCE": 2}
	for _, r := range cur {
		if !t.relations[[2]string{r.Schema, r.Name}] {
			res.Dropped = append(res.Dropped, r)
		}
	}
	sort.Slice(res.Dropped, func(i, j int) bool {
		a, b := res.Dropped[i], res.Dropped[j]
		if rank[a.Kind] != rank[b.Kind] {
			return rank[a.Kind] < rank[b.Kind]
		}
		return a.String() < b.String()
	})
	if !o.Yes {
		return res, ErrNotConfirmed
	}

	c, err := acquire(ctx, pool, "ferry db restore host="+hostname(), o.LockTimeout)
	if err != nil {
		return res, err
	}
	defer c.release(ctx)
	tx, err := c.Begin(ctx)
	if err != nil {
		return res, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, r := range res.Dropped {
		// CASCADE: dependants that are in the backup are recreated by
		// pg_restore below; the others are being dropped anyway.
		stmt := "DROP " + r.Kind + " IF EXISTS " + pgx.Identifier{r.Schema, r.Name}.Sanitize() + " CASCADE"
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return res, fmt.Errorf("%s: %w", stmt, err)
		}
		o.Logger.Info("dropped relation not in backup", zap.Stringer("relation", r))
	}
	if err := tx.Commit(ctx); err != nil {
		return res, err
	}
	if _, err := runTool(ctx, in.env, tool("pg_restore", o.PgBin, in.version), "--clean", "--if-exists", "--no-owner",
		"--single-transaction", "--exit-on-error", "--dbname="+in.connArgs, file); err != nil {
		return res, err
	}
	res.Restored = true
	return res, nil
}
