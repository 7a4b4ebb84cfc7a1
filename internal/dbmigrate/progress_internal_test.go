package dbmigrate

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// Every table's COPY counts once, also when a read splits it.
func TestCopyCounterAcrossReads(t *testing.T) {
	t.Parallel()
	script := "BEGIN;\nCOPY public.a (id) FROM stdin;\n1\n\\.\n\nCOPY public.b (id) FROM stdin;\n\\.\nSELECT 'COPY x';\nCOMMIT;\n"
	var seen []int64
	c := &copyCounter{r: iotest.OneByteReader(strings.NewReader(script)), progress: func(done int64) { seen = append(seen, done) }}
	out, err := io.ReadAll(c)
	if err != nil || string(out) != script {
		t.Fatalf("%q %v", out, err)
	}
	if len(seen) != 2 || seen[0] != 0 || seen[1] != 1 {
		t.Fatalf("progress calls %v, want [0 1]", seen)
	}
}
