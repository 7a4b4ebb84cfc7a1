package logrepeat_test

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/logrepeat"
)

// A condition seen every second is logged when it starts, once a minute
// while it lasts, and when it ends; each key on its own.
func TestStartEveryMinuteEnd(t *testing.T) {
	t.Parallel()
	var r logrepeat.Log[int64]
	t0 := time.Now()
	logged := 0
	for i := range 150 { // every second for 2.5 minutes
		if _, _, ok := r.On(1, t0.Add(time.Duration(i)*time.Second)); ok {
			logged++
		}
	}
	if logged != 3 { // at 0s, 60s and 120s
		t.Fatalf("logged %d times, want 3", logged)
	}
	if _, _, ok := r.On(2, t0); !ok {
		t.Fatal("another key's start was not logged")
	}
	since, n, ok := r.Off(1)
	if !ok || n != 150 || !since.Equal(t0) {
		t.Fatalf("end: %v %d %v", since, n, ok)
	}
	if _, _, ok := r.Off(1); ok {
		t.Fatal("ended twice")
	}
	if _, _, ok := r.On(1, t0.Add(time.Hour)); !ok {
		t.Fatal("a new start was not logged")
	}
}
