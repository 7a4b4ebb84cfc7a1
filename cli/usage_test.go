package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runNoServices runs ferry with arguments that must fail (or print help)
// before any connection is opened.
func runNoServices(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), append([]string{"--log-level", "error"}, args...), &out, &errb, Options{})
	return code, out.String(), errb.String()
}

// firstLine is what an operator reads first on stderr.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// An unknown subcommand of a group command is bad usage (exit 2) with one
// clear line, like an unknown top-level command; it used to print the
// group's help and exit 0. A group without arguments still prints help.
// Not parallel: Main sets process-wide state (see TestBBMCheckFinalizeFlow).
func TestUnknownSubcommandsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nosuch"}, `ferry: unknown command "nosuch" for "ferry"`},
		{[]string{"bbm", "nosuch"}, `ferry: unknown command "nosuch" for "ferry bbm"`},
		{[]string{"bbm", "set", "bogus", "3"}, `ferry: unknown command "bogus" for "ferry bbm set"`},
		{[]string{"bm", "nosuch"}, `ferry: unknown command "nosuch" for "ferry bm"`},
		{[]string{"db", "nosuch"}, `ferry: unknown command "nosuch" for "ferry db"`},
		{[]string{"db", "--dir", "x", "nosuch", "y"}, `ferry: unknown command "nosuch" for "ferry db"`},
		{[]string{"bbm", "finalise", "X"}, `ferry: unknown command "finalise" for "ferry bbm"; did you mean finalize?`},
	} {
		code, out, errs := runNoServices(t, tc.args...)
		if code != 2 || firstLine(errs) != tc.want || out != "" {
			t.Errorf("ferry %s: exit %d, stdout %q, stderr %q; want 2 and first line %q", strings.Join(tc.args, " "), code, out, errs, tc.want)
		}
	}
	for _, args := range [][]string{{"bbm"}, {"bbm", "set"}, {"bm"}, {"db"}, {"bbm", "--help"}} {
		code, out, errs := runNoServices(t, args...)
		if code != 0 || !strings.Contains(out, "Available Commands:") || errs != "" {
			t.Errorf("ferry %s: exit %d, stderr %q, stdout %.80q; want help and exit 0", strings.Join(args, " "), code, errs, out)
		}
	}
}

// Numeric flags out of their range are refused with exit 2 naming the flag
// before anything is opened: explicit zeros that would silently mean the
// default, and values the database or the runtime cannot hold.
func TestNumericFlagsExit2(t *testing.T) {
	queue := func(flags ...string) []string {
		return append([]string{"bbm", "queue", "CopyColumnUsingBackgroundMigrationJob", "events", "id", `[["id"],["id_convert_to_bigint"]]`}, flags...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{queue("--batch-size", "99999999999"), "--batch-size: must be at most 2147483647"},
		{queue("--batch-size", "0"), "--batch-size: must be at least 1"},
		{queue("--batch-size", "-5"), "--batch-size: must be at least 1"},
		{queue("--sub-batch-size", "0"), "--sub-batch-size: must be at least 1"},
		{queue("--sub-batch-size", "2147483648"), "--sub-batch-size: must be at most 2147483647"},
		{queue("--max-batch-size", "0"), "--max-batch-size: must be at least 1"},
		{queue("--max-batch-size", "3000000000"), "--max-batch-size: must be at most 2147483647"},
		{queue("--pause-ms", "99999999999"), "--pause-ms: must be at most 2147483647"},
		{queue("--pause-ms", "-1"), "--pause-ms: must be at least 0"},
		{queue("--parallel", "0"), "--parallel: must be at least 1"},
		{queue("--parallel", "65"), "--parallel: must be at most 64"},
		{queue("--target-batch-duration", "0"), "--target-batch-duration must be between 50ms and 10m0s, got 0"},
		{[]string{"bbm", "show", "1", "--limit", "-1"}, "--limit: must be at least 0"},
		{[]string{"bm", "steal", "CopyColumn", "--chunk", "0"}, "--chunk: must be at least 1"},
		{[]string{"db", "migrate", "--lock-timeout", "-1s"}, "--lock-timeout: must be 0 (fail at once) or between 1ms and"},
		{[]string{"db", "migrate", "--lock-timeout", "500us"}, "--lock-timeout: must be 0 (fail at once) or between 1ms and"},
		{[]string{"db", "status", "--lock-timeout", "1000h"}, "--lock-timeout: must be 0 (fail at once) or between 1ms and"},
		{[]string{"db", "restore", "x.dump", "--lock-timeout", "1000h"}, "--lock-timeout: must be 0 (fail at once) or between 1ms and"},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--at", "1e300"}, `--at "1e300": epoch seconds out of range`},
		{[]string{"enqueue", "Ferry::Noop", "[]", "--at", "NaN"}, `--at "NaN": epoch seconds out of range`},
		{[]string{"demo", "--rows", "3000000000"}, "--rows: must be at most 2147483647"},
		{[]string{"demo", "--parallel", "100"}, "--parallel: must be at most 64"},
		{[]string{"demo", "--concurrency", "0"}, "--concurrency: must be at least 1"},
		{[]string{"web", "--listen", "nonsense"}, `config: web.listen: must be host:port (e.g. 127.0.0.1:7373), got "nonsense"`},
	} {
		code, _, errs := runNoServices(t, tc.args...)
		if code != 2 || !strings.HasPrefix(firstLine(errs), "ferry: "+tc.want) {
			t.Errorf("ferry %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
	}
}
