package test

import (
	"strconv"
	"testing"

	"github.com/ferrymigrate/ferry/cli"
)

// A migration that fails on a row keeps PostgreSQL's DETAIL (which row)
// in what the operator sees: `bm perform`'s error, and the failed batch's
// message in `bbm show`.
func TestMigrationErrorsKeepPostgresDetail(t *testing.T) {
	b := bmSetup(t)
	// Row 2's legacy_id (20) is already row 100's id_big: copying it
	// breaks the unique index.
	b.exec(t, `UPDATE users SET id_big = 20 WHERE id = 100; CREATE UNIQUE INDEX users_id_big ON users (id_big)`)
	const detail = "DETAIL: Key (id_big)=(20) already exists."

	code, _, errs := b.ferry(t, cli.Options{}, "bm", "perform", "CopyColumn", `["users","legacy_id","id_big",1,5]`)
	if code != 1 {
		t.Fatalf("bm perform: exit %d, want 1\n%s", code, errs)
	}
	wantContains(t, errs, `duplicate key value violates unique constraint "users_id_big"`, detail)

	// The batched copy fails on a CHECK: rows from id 100 on copy 1000+.
	b.exec(t, `DROP INDEX users_id_big; UPDATE users SET id_big = NULL;
		ALTER TABLE users ADD CONSTRAINT id_big_small CHECK (id_big < 1000)`)
	args := []string{"CopyColumnUsingBackgroundMigrationJob", "users", "id", `[["legacy_id"],["id_big"]]`}
	if code, out, errs := b.ferry(t, cli.Options{}, append([]string{"bbm", "queue"}, args...)...); code != 0 {
		t.Fatalf("bbm queue: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := b.ferry(t, cli.Options{}, append([]string{"bbm", "finalize"}, args...)...)
	if code != 1 {
		t.Fatalf("bbm finalize: exit %d, want 1\n%s\n%s", code, out, errs)
	}
	id := b.int(t, `SELECT max(id) FROM batched_background_migrations`)
	code, out, errs = b.ferry(t, cli.Options{}, "bbm", "show", strconv.Itoa(id))
	if code != 0 {
		t.Fatalf("bbm show: exit %d\n%s", code, errs)
	}
	wantContains(t, out, `violates check constraint "id_big_small"`, "DETAIL: Failing row contains (")
}
