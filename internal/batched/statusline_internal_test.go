package batched

import (
	"strings"
	"testing"
)

// The status line is one line per migration whatever its names hold
// (scripts read `ferry bbm status` line by line).
func TestStatusLineIsOneLine(t *testing.T) {
	t.Parallel()
	m := &Migration{Status: Active, Class: "Copy", Table: "we\"ird\\name\nx", Column: "id\tc", Args: []byte(`["a\nb"]`)}
	got := m.StatusLine()
	if strings.ContainsAny(got, "\n\t") || !strings.Contains(got, `we\"ird\\name\nx,id\tc`) {
		t.Fatalf("StatusLine = %q", got)
	}
	plain := &Migration{Status: Active, Class: "Copy", Table: `we"ird`, Column: "id", Args: []byte(`[]`)}
	if got := plain.StatusLine(); got != `active | Copy,we"ird,id,[]` {
		t.Fatalf("without control characters the names are as they are: %q", got)
	}
}
