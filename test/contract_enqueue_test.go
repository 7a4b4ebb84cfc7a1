package test

import (
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/internal/testenv"
)

// `ferry enqueue BackgroundMigrationWorker` refuses, with exit 2 and
// nothing pushed, a job no worker could run: args not [class, [args...],
// lease_attempts?], or arguments that do not fit a migration class ferry
// has (count, types, order, hostile or overlong identifiers). Before, each
// was pushed with exit 0 and surfaced only later in the dead set. Classes
// ferry does not have are pushed: the Ruby app's worker may have them.
func TestContractEnqueueBMWorkerBadArgs(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t)
	url := testenv.RedisURL(t)
	rdb := redisFor(t, url)
	long := strings.Repeat("a", 64)
	for _, c := range []struct{ args, want string }{
		{`[]`, "got 0 elements"},
		{`[1,[]]`, "the first element must be a class name"},
		{`["",[]]`, "the first element must be a class name"},
		{`["CopyColumn","notarray"]`, "the second element must be an array"},
		{`["CopyColumn",[],"x"]`, "lease_attempts must be a non-negative integer"},
		{`["CopyColumn",["events","a","b",1,2],3,4]`, "got 4 elements"},
		{`["CopyColumn"]`, "expected 5 arguments, got 0"},
		{`["CopyColumn",["events","legacy_id","id_big",1]]`, "expected 5 arguments, got 4"},
		{`["CopyColumn",["events","legacy_id","id_big","a",2]]`, "argument 4 (StartID)"},
		{`["CopyColumn",["events","legacy_id","id_big",10,1]]`, "start_id 10 is greater than end_id 1"},
		{`["CopyColumn",["users; DROP TABLE x","a","b",1,2]]`, `table "users; DROP TABLE x" is not a plain identifier`},
		{`["CopyColumn",["events","a'b","c",1,2]]`, `column "a'b" is not a plain identifier`},
		{`["CopyColumn",["events","legacy_id","` + long + `",1,2]]`, "is 64 bytes long"},
	} {
		out, stderr, code := runFerry(t, url, "enqueue", "BackgroundMigrationWorker", c.args)
		l := firstLine(stderr)
		if code != 2 || !strings.HasPrefix(l, "ferry: ARGS_JSON: ") || !strings.Contains(l, c.want) {
			t.Errorf("enqueue %s: exit %d, want 2 with %q first\nstdout: %s\nstderr: %s", c.args, code, c.want, out, stderr)
		}
	}
	if n := llen(ctx, t, rdb, "queue:background_migration"); n != 0 {
		t.Fatalf("%d bad jobs were pushed", n)
	}
	for _, args := range []string{
		`["CopyColumn",["events","legacy_id","id_big",1,1000]]`,
		`["CopyColumn",["public.events","legacy_id","id_big",1,1000],2]`,
		`["PopulateThings",[1,"anything"]]`,
		`["PopulateThings"]`,
	} {
		mustFerry(t, url, "enqueue", "BackgroundMigrationWorker", args)
	}
	mustFerry(t, url, "enqueue", "BackgroundMigrationWorker", `["CopyColumn",["events","legacy_id","id_big",1,1000]]`, "--in", "5m")
	if n, s := llen(ctx, t, rdb, "queue:background_migration"), zcard(ctx, t, rdb, "schedule"); n != 4 || s != 1 {
		t.Fatalf("queue %d, schedule %d; want 4 and 1", n, s)
	}
}
