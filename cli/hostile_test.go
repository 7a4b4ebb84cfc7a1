package cli

import (
	"slices"
	"strings"
	"testing"
)

// Negative numbers given as positional arguments reach the command, which
// refuses them naming the argument; pflag used to read them as shorthand
// flags ("unknown shorthand flag '5' in -5"). Flag values stay with their
// flags. Not parallel: Main sets process-wide state.
func TestNegativePositionalArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bbm", "set", "max-running", "-5"}, `ferry: max-running must be an integer between 0 and 1000, got "-5"`},
		{[]string{"bbm", "set", "max-running", "--config", "", "-1.5"}, `ferry: max-running must be an integer between 0 and 1000, got "-1.5"`},
		{[]string{"bbm", "set", "parallel", "-1", "3"}, `ferry: migration id must be a positive integer, got "-1"`},
		{[]string{"bbm", "set", "parallel", "1", "-3"}, `ferry: parallel must be between 1 and 64, got "-3"`},
		{[]string{"bbm", "show", "-1", "--json"}, `ferry: migration id must be a positive integer, got "-1"`},
		{[]string{"bbm", "pause", "-7"}, `ferry: migration id must be a positive integer, got "-7"`},
		{[]string{"bbm", "mark-finished", "-1"}, `ferry: migration id must be a positive integer, got "-1"`},
		{[]string{"db", "downto", "-1"}, `ferry: bad migration version: "-1" is not a version`},
		{[]string{"db", "--dir", "x", "mark-complete", "-20240101"}, `ferry: bad migration version: "-20240101" is not a version`},
		{[]string{"db", "repair", "-2"}, `ferry: bad migration version: "-2" is not a version`},
		{[]string{"bbm", "queue", "C", "t", "id", "[]", "--pause-ms", "-1"}, "ferry: --pause-ms: must be at least 0, got -1"},
		{[]string{"bbm", "show", "1", "--limit", "-1"}, "ferry: --limit: must be at least 0"},
		{[]string{"bm", "steal", ""}, "ferry: CLASS must not be empty"},
		{[]string{"bm", "perform", " ", "[]"}, "ferry: CLASS must not be empty"},
		{[]string{"bm", "finalize", "A\x01"}, `ferry: CLASS "A\x01" is not a class name`},
		{[]string{"bm", "pending", "--class", ""}, "ferry: --class must not be empty"},
	} {
		code, out, errs := runNoServices(t, tc.args...)
		if code != 2 || !strings.HasPrefix(firstLine(errs), tc.want) || out != "" {
			t.Errorf("ferry %q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
}

func TestNegativeArgsRewrite(t *testing.T) {
	a := &App{}
	root := a.rootCmd()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"bbm", "show", "1"}, []string{"bbm", "show", "1"}},
		{[]string{"bbm", "set", "parallel", "-1", "3"}, []string{"bbm", "set", "parallel", "--", "-1", "3"}},
		{[]string{"--log-level", "warn", "bbm", "set", "parallel", "2", "-3", "--json"}, []string{"--log-level", "warn", "bbm", "set", "parallel", "--json", "--", "2", "-3"}},
		{[]string{"bbm", "queue", "C", "t", "c", "--pause-ms", "-1"}, []string{"bbm", "queue", "C", "t", "c", "--pause-ms", "-1"}},
		{[]string{"bbm", "queue", "C", "t", "c", "--pause-ms", "-1", "-5"}, []string{"bbm", "queue", "--pause-ms", "-1", "--", "C", "t", "c", "-5"}},
		{[]string{"db", "--dir", "d", "downto", "-1", "--", "x"}, []string{"db", "--dir", "d", "downto", "--", "-1", "x"}},
	} {
		if got := negativeArgs(root, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("negativeArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
