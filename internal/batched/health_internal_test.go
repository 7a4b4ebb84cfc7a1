package batched

import (
	"testing"
	"time"
)

// A condition seen at every batch is logged when it starts, once a minute
// while it lasts, and when it ends; per migration.
func TestRepeatLogStartEveryMinuteEnd(t *testing.T) {
	t.Parallel()
	var r repeatLog
	t0 := time.Now()
	logged := 0
	for i := 0; i < 150; i++ { // every second for 2.5 minutes
		if _, _, ok := r.on(1, t0.Add(time.Duration(i)*time.Second)); ok {
			logged++
		}
	}
	if logged != 3 { // at 0s, 60s and 120s
		t.Fatalf("logged %d times, want 3", logged)
	}
	if _, _, ok := r.on(2, t0); !ok {
		t.Fatal("another migration's start was not logged")
	}
	since, n, ok := r.off(1)
	if !ok || n != 150 || !since.Equal(t0) {
		t.Fatalf("end: %v %d %v", since, n, ok)
	}
	if _, _, ok := r.off(1); ok {
		t.Fatal("ended twice")
	}
	if _, _, ok := r.on(1, t0.Add(time.Hour)); !ok {
		t.Fatal("a new start was not logged")
	}
}
