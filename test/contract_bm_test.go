package test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/legacy"
)

// bmBin runs the ferry binary as an operator would, against b's Redis and
// PostgreSQL, and returns stdout, stderr and the exit code.
func (b *bmBundle) bmBin(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runFerry(t, b.redisURL, append(args, "--database-url", b.dbURL)...)
}

// firstLine is what an operator (or a script) reads of stderr.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// A pending tracking row that fails is the operation failing, not bad
// usage: `bm pending --perform` exits 1 (as its help says) with the row
// named on the first line of stderr, and the row stays pending. A class
// named with --class that ferry does not have is bad input: exit 2.
func TestContractBMPendingPerformFailingRowExits1(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if err := legacy.Track(b.ctx, b.db, "CopyColumn",
		json.RawMessage(`["users","legacy_id","id_big",1,50]`),
		json.RawMessage(`["users","legacy_id","no_such_column",51,100]`)); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := b.bmBin(t, "bm", "pending", "--perform")
	if code != 1 || !strings.Contains(out, "performed 1 pending job") {
		t.Fatalf("pending --perform: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, stderr)
	}
	if l := firstLine(stderr); !strings.HasPrefix(l, "ferry: ") || !strings.Contains(l, "no_such_column") {
		t.Fatalf("first stderr line does not name the failing column: %q", l)
	}
	if n := b.int(t, `SELECT count(*) FROM background_migration_jobs WHERE status = 0`); n != 1 || b.copied(t) != 50 {
		t.Fatalf("%d rows pending, %d copied; want 1 and 50", n, b.copied(t))
	}
	// finalize performs pending rows too: the same failure, the same exit.
	out, stderr, code = b.bmBin(t, "bm", "finalize", "CopyColumn")
	if code != 1 {
		t.Fatalf("finalize: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, stderr)
	}
	out, stderr, code = b.bmBin(t, "bm", "pending", "--perform", "--class", "PopulateThings")
	if code != 2 || !strings.Contains(firstLine(stderr), `unknown background migration class "PopulateThings"`) {
		t.Fatalf("--class of an unknown class: exit %d, want 2\nstdout: %s\nstderr: %s", code, out, stderr)
	}
}

// steal and finalize of a class ferry cannot perform (a typo, a class
// from another release, a hostile string) exit 2 naming the registered
// classes, and leave its jobs exactly where Ruby Sidekiq put them. Before,
// steal took the jobs out and pushed them back (exit 1), and finalize of a
// misspelt class exited 0 as if the migration were finished.
func TestContractBMStealFinalizeUnknownClassExit2(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	b.ruby(t, `
bm_push(['PopulateThings', [1, 100]])
bm_push(['PopulateThings', [101, 200]], at: Time.now.to_f + 3600)
`)
	before := b.rdb.LRange(b.ctx, "queue:background_migration", 0, -1).Val()
	for _, args := range [][]string{
		{"bm", "steal", "PopulateThings"},
		{"bm", "steal", "PopulateThings", "--retry-dead", "--keep-going"},
		{"bm", "finalize", "PopulateThings"},
		{"bm", "finalize", "CopyColum"},
		{"bm", "steal", "users; DROP TABLE x"},
		{"bm", "finalize", "users; DROP TABLE x"},
	} {
		out, stderr, code := b.bmBin(t, args...)
		l := firstLine(stderr)
		if code != 2 || !strings.HasPrefix(l, "ferry: unknown background migration class") || !strings.Contains(l, "registered: ") {
			t.Fatalf("%q: exit %d, want 2 with the class named first\nstdout: %s\nstderr: %s", args, code, out, stderr)
		}
	}
	after := b.rdb.LRange(b.ctx, "queue:background_migration", 0, -1).Val()
	if strings.Join(after, "\n") != strings.Join(before, "\n") || len(after) != 1 || b.rdb.ZCard(b.ctx, "schedule").Val() != 1 {
		t.Fatalf("jobs moved: queue %v -> %v, schedule %d", before, after, b.rdb.ZCard(b.ctx, "schedule").Val())
	}
	if n := b.int(t, `SELECT count(*) FROM x`); n != 1 {
		t.Fatalf("table x has %d rows", n)
	}
	// A class ferry has still steals as before.
	b.ruby(t, `bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 1, 10]])`)
	if out, stderr, code := b.bmBin(t, "bm", "steal", "CopyColumn"); code != 0 || b.copied(t) != 10 {
		t.Fatalf("steal CopyColumn: exit %d, %d copied\n%s %s", code, b.copied(t), out, stderr)
	}
}

// Long legacy work shows its progress as the other long commands do:
// --progress bar draws a bar with the count (on a terminal that is the
// default; a pipe gets a plain line every few seconds once it lasts).
func TestContractBMShowsProgress(t *testing.T) {
	t.Parallel()
	b := bmSetup(t)
	if err := legacy.Track(b.ctx, b.db, "CopyColumn",
		json.RawMessage(`["users","legacy_id","id_big",1,50]`),
		json.RawMessage(`["users","legacy_id","id_big",51,100]`)); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := b.bmBin(t, "bm", "pending", "--perform", "--progress", "bar")
	if code != 0 || !strings.Contains(stderr, "pending background migration jobs") || !strings.Contains(stderr, "(2/2") {
		t.Fatalf("pending --perform --progress bar: exit %d\n%q", code, stderr)
	}
	b.ruby(t, `
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 101, 150]])
bm_push(['CopyColumn', ['users', 'legacy_id', 'id_big', 151, 200]])
`)
	_, stderr, code = b.bmBin(t, "bm", "steal", "CopyColumn", "--progress", "bar")
	if code != 0 || !strings.Contains(stderr, "CopyColumn from queue") || !strings.Contains(stderr, "(2/2") {
		t.Fatalf("steal --progress bar: exit %d\n%q", code, stderr)
	}
	// Short work in a pipe prints no progress line at all.
	_, stderr, code = b.bmBin(t, "bm", "steal", "CopyColumn")
	if code != 0 || stderr != "" {
		t.Fatalf("steal with nothing to do: exit %d\n%q", code, stderr)
	}
}
