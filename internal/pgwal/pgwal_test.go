package pgwal_test

import (
	"testing"

	"github.com/ferrymigrate/ferry/internal/pgwal"
	"github.com/ferrymigrate/ferry/internal/testenv"
)

func TestPending(t *testing.T) {
	for _, c := range []struct {
		cur, arch string
		want      int64
		ok        bool
	}{
		{"000000010000000000000030", "000000010000000000000001", 47, true},
		{"000000010000000300000002", "0000000100000002000000FE", 4, true},
		{"000000010000000000000005", "000000010000000000000005", 0, true},
		{"000000010000000000000005", "000000010000000000000009", 0, true}, // archived "ahead": a new timeline
		{"000000010000000000000005", "00000001000000000000000G", 0, false},
		{"000000010000000000000005", "00000002.history", 0, false},
	} {
		got, ok := pgwal.Pending(c.cur, c.arch)
		if got != c.want || ok != c.ok {
			t.Errorf("Pending(%s, %s) = %d, %v; want %d, %v", c.cur, c.arch, got, ok, c.want, c.ok)
		}
	}
}

// The real relation runs on a server without archiving and says nothing;
// a fabricated one with a backlog is counted.
func TestPendingSegments(t *testing.T) {
	pool := testenv.Postgres(t)
	ctx := testenv.Context(t)
	if _, ok, err := pgwal.PendingSegments(ctx, pool, pgwal.Archiver); err != nil || ok {
		t.Fatalf("on a server without archiving: ok %v, err %v", ok, err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE fake_archiver (archive_mode text, current_wal text, last_archived_wal text);
		INSERT INTO fake_archiver VALUES ('on', '000000010000000100000010', '0000000100000000000000F0')`); err != nil {
		t.Fatal(err)
	}
	n, ok, err := pgwal.PendingSegments(ctx, pool, "fake_archiver")
	if err != nil || !ok || n != 32 {
		t.Fatalf("fabricated backlog: %d, %v, %v; want 32", n, ok, err)
	}
}
