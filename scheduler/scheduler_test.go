package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/scheduler"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"@every 1s", "* * * * *", "*/5 * * * * *", "@hourly"} {
		if _, err := scheduler.Parse(spec); err != nil {
			t.Errorf("%s: %v", spec, err)
		}
	}
	if _, err := scheduler.Parse("not a spec"); !errors.Is(err, scheduler.ErrInvalidSpec) {
		t.Fatalf("want ErrInvalidSpec, got %v", err)
	}
}

func TestRunsUntilCancelled(t *testing.T) {
	t.Parallel()
	s := scheduler.New(nil)
	var n atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Add("tick", "@every 1s", func(context.Context) error {
		if n.Add(1) == 2 {
			cancel()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n.Load() < 2 {
		t.Fatalf("ran %d times", n.Load())
	}
}

func Example() {
	s := scheduler.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	_ = s.Add("hello", "@every 1s", func(ctx context.Context) error {
		fmt.Println("tick")
		cancel() // stop after the first run
		return nil
	})
	_ = s.Run(ctx)
	// Output: tick
}
