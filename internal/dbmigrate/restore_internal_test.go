package dbmigrate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestCopyHoldingTail(t *testing.T) {
	src := strings.Repeat("0123456789", 10_000)
	for _, n := range []int{0, 1, 7, 1000, len(src), len(src) + 5} {
		var dst bytes.Buffer
		// One byte per read: the held tail moves with every read.
		tail, err := copyHoldingTail(&dst, iotest.OneByteReader(strings.NewReader(src)), n)
		if err != nil {
			t.Fatal(err)
		}
		keep := min(n, len(src))
		if dst.String() != src[:len(src)-keep] || string(tail) != src[len(src)-keep:] {
			t.Fatalf("n=%d: wrote %d bytes, held %d; want %d and %d", n, dst.Len(), len(tail), len(src)-keep, keep)
		}
	}
	boom := errors.New("boom")
	if _, err := copyHoldingTail(new(bytes.Buffer), iotest.ErrReader(boom), 10); !errors.Is(err, boom) {
		t.Fatalf("read error: %v", err)
	}
}

func TestParseCopyMax(t *testing.T) {
	script := "SET x = 1;\n" +
		"COPY public.ferry_schema_versions (name, \"version\", applied_at) FROM stdin;\n" +
		"a\t1\t2026-01-01\nb\t12\t2026-01-01\nc\t\\N\t2026-01-01\n\\.\n" +
		"COPY other.ferry_schema_versions (version, name) FROM stdin;\n3\tz\n\\.\n"
	if v, err := parseCopyMax([]byte(script), "version"); err != nil || v != 12 {
		t.Fatalf("got %d, %v; want 12", v, err)
	}
	if v, err := parseCopyMax([]byte("SET x = 1;\n"), "version"); err != nil || v != 0 {
		t.Fatalf("no COPY: got %d, %v; want 0", v, err)
	}
	if _, err := parseCopyMax([]byte("COPY t (version) FROM stdin;\nnine\n\\.\n"), "version"); err == nil {
		t.Fatal("a non-numeric version parsed")
	}
}

// Past every check, pg_restore still dies half-way (here: the archive is
// cut, as if the disk went away during the restore). The script's COMMIT
// never reaches psql, so the drops and whatever the script did before
// are rolled back.
func TestApplyRestoreRollsBackWhenPgRestoreDies(t *testing.T) {
	ctx := testenv.Context(t)
	pool := testenv.DirectPostgres(t) // pg_restore needs a real session
	if _, err := pool.Exec(ctx, `CREATE TABLE users (id bigint PRIMARY KEY, email text);
		INSERT INTO users SELECT i, md5(i::text) FROM generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "db.dump")
	if _, err := Backup(ctx, pool, file, BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data[:len(data)*6/10], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE extra (id int); DELETE FROM users WHERE id <= 100`); err != nil {
		t.Fatal(err)
	}
	in, err := inspect(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	t0, err := readTOC(ctx, in, file, "")
	if err != nil {
		t.Fatal(err)
	}
	drops, err := planDrops(ctx, pool, t0)
	if err != nil || len(drops) != 1 || drops[0].Name != "extra" {
		t.Fatalf("plan: %v, %v", drops, err)
	}
	err = applyRestore(ctx, in, file, drops, "", "", nil)
	if !errors.Is(err, ErrRestoreFailed) || !strings.Contains(err.Error(), "end of file") {
		t.Fatalf("restore of a cut archive: %v", err)
	}
	var extra bool
	var users int
	if err := pool.QueryRow(ctx, `SELECT to_regclass('extra') IS NOT NULL, (SELECT count(*) FROM users)`).Scan(&extra, &users); err != nil {
		t.Fatal(err)
	}
	if !extra || users != 19900 {
		t.Fatalf("after a failed restore: table extra exists %v, %d users; want true, 19900", extra, users)
	}
}

// A ferry-named session idle for longer than quietAfter is not a ferry
// process (a PgBouncer server connection keeps the last client's name);
// one idle for less, or busy, is.
func TestFerrySessionsSkipsLongIdle(t *testing.T) {
	ctx := testenv.Context(t)
	url := testenv.DirectURL(t, testenv.DatabaseURL(t))
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cc.RuntimeParams["application_name"] = "ferry-worker"
	other, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close(context.Background()) })
	if _, err := other.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if got, err := ferrySessions(ctx, pool, time.Hour); err != nil || len(got) != 1 || got[0].ApplicationName != "ferry-worker" {
		t.Fatalf("recently idle: %v %v", got, err)
	}
	// Idle since before "now minus a microsecond": too long.
	if got, err := ferrySessions(ctx, pool, time.Microsecond); err != nil || len(got) != 0 {
		t.Fatalf("long idle: %v %v", got, err)
	}
}
