package cli

import (
	"os"
	"strings"
	"testing"
)

// The demo's last line is a command that works pasted into the user's
// shell: the binary as invoked and the database URL it needs.
func TestDemoTryLineWorksFromAShell(t *testing.T) {
	c := newBBMCLI(t)
	code, out, errs := c.run("demo", "--rows", "2000", "--local", "--concurrency", "1", "--parallel", "1")
	if code != 0 {
		t.Fatalf("demo: %d\n%s\n%s", code, out, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	want := "Try: DATABASE_URL=" + shQuote(c.url) + " " + shQuote(os.Args[0]) + " bbm show 1"
	if last != want {
		t.Fatalf("last line %q, want %q", last, want)
	}
	a := &App{}
	a.Cfg.DatabaseURL = "postgres://u:secret@h/db"
	if got := a.tryCommand("bbm show 1"); strings.Contains(got, "secret") || !strings.Contains(got, "with DATABASE_URL set") {
		t.Fatalf("a password in the URL: %q", got)
	}
}
