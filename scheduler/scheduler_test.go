package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

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

type every10ms struct{}

func (every10ms) Next(t time.Time) time.Time { return t.Add(10 * time.Millisecond) }

// A run that keeps failing (the database restarting) is logged when it
// starts failing and when it works again, not once a run.
func TestFailingRunsLoggedOnce(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.InfoLevel)
	s := scheduler.New(zap.New(core))
	var n atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.AddSchedule("tick", every10ms{}, func(context.Context) error {
		switch k := n.Add(1); {
		case k <= 5:
			return fmt.Errorf("down %d", k)
		case k == 7:
			cancel()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	failed, again := logs.FilterMessage("scheduled run failed").Len(), logs.FilterMessage("scheduled run works again").All()
	if failed != 1 || len(again) != 1 || again[0].ContextMap()["failed_runs"] != int64(5) {
		t.Fatalf("%d failure lines, %d recovery lines (%v); want one each, after 5 failed runs", failed, len(again), logs.All())
	}
}
