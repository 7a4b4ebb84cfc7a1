package dbmigrate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry/internal/ferryschema"
)

// ErrRestoreFailed: the restore itself failed and was rolled back; the
// database is as it was before.
var ErrRestoreFailed = errors.New("restore failed")

// badArchive is the error for an archive pg_restore ran on and rejected;
// a missing or broken tool stays [ErrTool].
func badArchive(file, what string, err error) error {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err
	}
	return fmt.Errorf("%w: %s %s (%s); nothing was changed", ErrBadBackup, file, what, firstLine(string(ee.Stderr)))
}

// firstLine is the first non-empty line of a tool's stderr, preferring
// an ERROR line (psql prints warnings and notices before it).
func firstLine(s string) string {
	var first string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if strings.Contains(l, "ERROR:") || strings.Contains(l, "FATAL:") {
			return l
		}
		if first == "" {
			first = l
		}
	}
	if first == "" {
		return "no message"
	}
	return first
}

// readMeta reads the sidecar of file; nil when there is none.
func readMeta(file string) (*BackupMeta, error) {
	data, err := os.ReadFile(MetaPath(file))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m := &BackupMeta{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v (remove it to restore without it)", ErrBadBackup, MetaPath(file), err)
	}
	return m, nil
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkAgainstMeta compares file with what `ferry db backup` recorded
// about it. The sidecar can only make a restore refuse, never accept one.
func checkAgainstMeta(file string, m *BackupMeta) error {
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	if m.Size > 0 && fi.Size() != m.Size {
		return fmt.Errorf("%w: %s is %d bytes, but `ferry db backup` wrote %d (%s): it is truncated or was changed; nothing was changed",
			ErrBadBackup, file, fi.Size(), m.Size, MetaPath(file))
	}
	if m.SHA256 == "" {
		return nil
	}
	sum, err := fileSHA256(file)
	if err != nil {
		return err
	}
	if sum != m.SHA256 {
		return fmt.Errorf("%w: %s does not match the SHA-256 in %s: it is corrupt or was changed; nothing was changed",
			ErrBadBackup, file, MetaPath(file))
	}
	return nil
}

// readToEnd makes pg_restore decode every entry, data included:
// `pg_restore --list` reads only the table of contents at the start of
// the file, so it passes a truncated archive, and a flipped byte in
// compressed data shows only when that data is inflated.
func readToEnd(ctx context.Context, in *dbInfo, file, bin string) error {
	_, err := runTool(ctx, in.env, tool("pg_restore", bin, in.version), "--exit-on-error", "--file="+os.DevNull, file)
	if err != nil {
		return badArchive(file, "is truncated or corrupt: pg_restore cannot read it to the end", err)
	}
	return nil
}

// archiveSchemaVersion is the newest ferry schema version recorded in the
// archive's copy of [ferryschema.VersionTable]; 0 when it has none.
func archiveSchemaVersion(ctx context.Context, in *dbInfo, file, bin string) (int, error) {
	out, err := runTool(ctx, in.env, tool("pg_restore", bin, in.version), "--data-only", "--table="+ferryschema.VersionTable, "--file=-", file)
	if err != nil {
		return 0, badArchive(file, "is corrupt: pg_restore cannot read its "+ferryschema.VersionTable, err)
	}
	v, err := parseCopyMax(out, "version")
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %s: %v", ErrBadBackup, file, ferryschema.VersionTable, err)
	}
	return v, nil
}

// parseCopyMax returns the largest integer in column col of the COPY
// blocks of a pg_restore script.
func parseCopyMax(script []byte, col string) (int, error) {
	newest, idx := 0, -1
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if idx < 0 {
			// COPY public.ferry_schema_versions (version, name, applied_at) FROM stdin;
			cols, ok := strings.CutPrefix(line, "COPY ")
			if !ok {
				continue
			}
			_, cols, _ = strings.Cut(cols, "(")
			cols, _, _ = strings.Cut(cols, ") FROM stdin;")
			for i, c := range strings.Split(cols, ", ") {
				if strings.Trim(c, `"`) == col {
					idx = i
				}
			}
			if idx < 0 {
				return 0, fmt.Errorf("no column %s in %q", col, line)
			}
			continue
		}
		if line == `\.` {
			idx = -1
			continue
		}
		f := strings.Split(line, "\t")
		if idx >= len(f) || f[idx] == `\N` {
			continue
		}
		v, err := strconv.Atoi(f[idx])
		if err != nil {
			return 0, fmt.Errorf("%s %q is not a number", col, f[idx])
		}
		newest = max(newest, v)
	}
	return newest, sc.Err()
}

// checkArchiveFull checks everything about file before Restore changes
// anything: a custom-format archive, consistent with its sidecar,
// readable to the end, of the configured database (by the archive's own
// header: a sidecar can be edited or belong to another file), and with
// ferry tables no newer than this binary's. It returns the archive's
// table of contents and its sidecar (nil when there is none).
func checkArchiveFull(ctx context.Context, in *dbInfo, file string, o BackupOptions) (*toc, *BackupMeta, error) {
	if err := checkArchive(file); err != nil {
		return nil, nil, err
	}
	meta, err := readMeta(file)
	if err != nil {
		return nil, nil, err
	}
	if meta != nil {
		if err := checkAgainstMeta(file, meta); err != nil {
			return nil, meta, err
		}
		// GitLab's main and ci often share a cluster and a schema
		// shape: the archive's own database name may not tell them
		// apart, ferry's name does.
		if meta.Name != "" && o.Name != "" && meta.Name != o.Name && !o.ForceOtherDatabase {
			return nil, meta, fmt.Errorf("%w: %s is a backup of database %s, not %s (its %s says so); nothing was changed. Restore it with --db %s, or pass --force-other-database to restore it into %s anyway",
				ErrOtherDatabase, file, meta.Name, o.Name, MetaPath(file), meta.Name, o.Name)
		}
	}
	t, err := readTOC(ctx, in, file, o.PgBin)
	if err != nil {
		return nil, meta, badArchive(file, "is corrupt: pg_restore cannot read its table of contents", err)
	}
	if err := readToEnd(ctx, in, file, o.PgBin); err != nil {
		return nil, meta, err
	}
	if err := checkDatabase(in, file, t, meta, o.ForceOtherDatabase); err != nil {
		return nil, meta, err
	}
	v, err := archiveSchemaVersion(ctx, in, file, o.PgBin)
	if err != nil {
		return nil, meta, err
	}
	if v > ferryschema.Latest() {
		return nil, meta, fmt.Errorf("%w: %w; nothing was changed", ErrBadBackup, ferryschema.NewerError(file+"'s", v))
	}
	return t, meta, nil
}

// checkDatabase refuses an archive of another database unless force. The
// archive's header names its database; the sidecar must agree with it,
// and adds the cluster's system identifier when it has one.
func checkDatabase(in *dbInfo, file string, t *toc, meta *BackupMeta, force bool) error {
	if t.dbname == "" {
		return fmt.Errorf("%w: %s does not name the database it was taken from; nothing was changed", ErrBadBackup, file)
	}
	if !in.names(t.dbname) && !force {
		claim := ""
		if meta != nil && meta.Database != t.dbname {
			claim = fmt.Sprintf(" (%s says %q, but the archive itself names %q)", MetaPath(file), meta.Database, t.dbname)
		}
		return fmt.Errorf("%w: %s is a backup of database %q, but the configured database is %q%s; pass --force-other-database to restore it anyway",
			ErrOtherDatabase, file, t.dbname, in.name, claim)
	}
	if meta == nil {
		return nil
	}
	if meta.Database != t.dbname && !(in.names(meta.Database) && in.names(t.dbname)) {
		return fmt.Errorf("%w: %s says database %q, but the archive %s is a backup of %q: the sidecar belongs to another backup (remove it to restore without it); nothing was changed",
			ErrBadBackup, MetaPath(file), meta.Database, file, t.dbname)
	}
	if !force && meta.SystemIdentifier != "" && in.sysID != "" && meta.SystemIdentifier != in.sysID {
		return fmt.Errorf("%w: %s was taken on PostgreSQL cluster %s, but the configured database %q is on cluster %s; pass --force-other-database to restore it anyway",
			ErrOtherDatabase, file, meta.SystemIdentifier, in.name, in.sysID)
	}
	return nil
}

// restoreTail is how much of pg_restore's script is held back until
// pg_restore has exited 0: its final COMMIT and the footer after it.
const restoreTail = 16 << 10

// applyRestore drops the objects and restores file in ONE transaction,
// so a restore that fails at any point leaves the database as it was.
//
// Why this way: pg_restore runs its own session, so drops done by ferry
// cannot share its transaction; and restoring into a fresh database and
// renaming it needs CREATEDB and no other session on the database (ferry
// workers, the app). Instead pg_restore writes the script of the restore
// (--single-transaction: one BEGIN at the top and one COMMIT at the end,
// no other transaction control, large objects included) and psql runs
// our BEGIN, the drops, then that script, stopping at the first error.
// The script's tail, which holds the COMMIT, reaches psql only after
// pg_restore exited 0; on any failure psql's input just ends, and
// PostgreSQL rolls back a transaction whose session ends without COMMIT.
//
// keep is SQL run before the COMMIT (see savedRecords); progress, when
// set, is called with the tables whose data has been sent.
func applyRestore(parent context.Context, in *dbInfo, file string, drops []Object, keep, bin string, progress func(done int64)) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	psql := exec.CommandContext(ctx, tool("psql", bin, in.version), "--no-psqlrc", "--quiet",
		"--set=ON_ERROR_STOP=1", "--file=-", "--dbname="+in.connArgs)
	psql.Env = in.env
	psql.Stdout = io.Discard
	var psqlErr, pgrErr bytes.Buffer
	psql.Stderr = &psqlErr
	stdin, err := psql.StdinPipe()
	if err != nil {
		return err
	}
	pgr := exec.CommandContext(ctx, tool("pg_restore", bin, in.version), "--clean", "--if-exists", "--no-owner",
		"--single-transaction", "--exit-on-error", "--file=-", file)
	pgr.Env = in.env
	pgr.Stderr = &pgrErr
	script, err := pgr.StdoutPipe()
	if err != nil {
		return err
	}
	if err := psql.Start(); err != nil {
		return fmt.Errorf("%w: psql: %w", ErrTool, err)
	}
	if err := pgr.Start(); err != nil {
		_ = stdin.Close()
		_ = psql.Wait()
		return fmt.Errorf("%w: pg_restore: %w", ErrTool, err)
	}
	var src io.Reader = script
	if progress != nil {
		progress(0)
		src = &copyCounter{r: script, progress: progress}
	}
	tail, copyErr := sendScript(stdin, src, drops)
	if copyErr != nil {
		cancel() // psql stopped reading; pg_restore must not block on a full pipe
	}
	restoreErr := pgr.Wait()
	commit := copyErr == nil && restoreErr == nil && bytes.Contains(tail, []byte("\nCOMMIT;\n"))
	if commit {
		_, copyErr = stdin.Write(beforeCommit(tail, keep))
	}
	_ = stdin.Close()
	psqlRunErr := psql.Wait()
	switch {
	case parent.Err() != nil:
		return fmt.Errorf("%w and was rolled back, database %q is unchanged: %w", ErrRestoreFailed, in.name, parent.Err())
	case psqlRunErr != nil:
		return fmt.Errorf("%w and was rolled back, database %q is unchanged: %s", ErrRestoreFailed, in.name, firstLine(psqlErr.String()))
	case restoreErr != nil:
		return fmt.Errorf("%w and was rolled back, database %q is unchanged: pg_restore: %v: %s", ErrRestoreFailed, in.name, restoreErr, firstLine(pgrErr.String()))
	case copyErr != nil:
		return fmt.Errorf("%w and was rolled back, database %q is unchanged: feeding psql: %w", ErrRestoreFailed, in.name, copyErr)
	case !commit:
		return fmt.Errorf("%w and was rolled back, database %q is unchanged: pg_restore's script does not end with COMMIT", ErrRestoreFailed, in.name)
	}
	return nil
}

// sendScript writes BEGIN, the drops and pg_restore's script to psql,
// holding back the script's last restoreTail bytes, which it returns.
// pg_restore's own BEGIN then only draws a warning ("there is already a
// transaction in progress").
func sendScript(w io.Writer, script io.Reader, drops []Object) ([]byte, error) {
	var head strings.Builder
	// As the script's own header does, but before the drops: a role's
	// default statement timeout must not cut the restore short.
	head.WriteString("SET statement_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\nBEGIN;\n")
	for _, d := range drops {
		// IF EXISTS everywhere: an earlier CASCADE (a schema, a type) may
		// have taken it already.
		head.WriteString(d.drop + ";\n")
	}
	if _, err := io.WriteString(w, head.String()); err != nil {
		return nil, err
	}
	return copyHoldingTail(w, script, restoreTail)
}

// copyHoldingTail copies src to dst except its last n bytes, which it
// returns.
func copyHoldingTail(dst io.Writer, src io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, n+64<<10)
	for {
		m, rerr := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if len(buf) > n {
			if _, err := dst.Write(buf[:len(buf)-n]); err != nil {
				return nil, err
			}
			buf = buf[:copy(buf, buf[len(buf)-n:])]
		}
		if rerr == io.EOF {
			return buf, nil
		}
		if rerr != nil {
			return nil, rerr
		}
	}
}
