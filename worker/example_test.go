package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/worker"
)

type ResizeArgs struct {
	ImageID int64
	Format  string
	Width   int `sidekiq:",optional"`
}

func (ResizeArgs) Kind() string { return "Images::ResizeJob" }

// Sidekiq args are a positional array; a struct maps onto it field by field.
func ExampleDecodeArgs() {
	var a ResizeArgs
	if err := worker.DecodeArgs(json.RawMessage(`[42,"png"]`), &a); err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", a)

	err := worker.DecodeArgs(json.RawMessage(`[42]`), &a)
	fmt.Println(err)

	raw, _ := worker.EncodeArgs(ResizeArgs{ImageID: 7, Format: "<webp>", Width: 300})
	fmt.Println(string(raw))
	// Output:
	// {ImageID:42 Format:png Width:0}
	// expected 2 to 3 arguments, got 1
	// [7,"<webp>",300]
}

// A payload keeps its bytes, key order and unknown keys; numbers beyond
// int64 survive.
func Example_payload() {
	j, err := sidekiq.ParseJob([]byte(`{"class":"HardWorker","args":[1180591620717411303424],"jid":"af740db0b10d697247f7ce80","locale":"de"}`))
	if err != nil {
		panic(err)
	}
	fmt.Println(j.Class(), j.JID(), j.Queue(), string(j.Args()))
	e := j.Clone()
	e.SetString("error_class", "NameError")
	fmt.Println(string(e.Encode()))
	// Output:
	// HardWorker af740db0b10d697247f7ce80 default [1180591620717411303424]
	// {"class":"HardWorker","args":[1180591620717411303424],"jid":"af740db0b10d697247f7ce80","locale":"de","error_class":"NameError"}
}

// Sidekiq's retry backoff: count⁴ + 15 s plus up to 9·(count+1) s of jitter.
func Example_retryDelay() {
	for _, count := range []int{0, 1, 2, 24} {
		lo := sidekiq.RetryDelay(count, func(int) int { return 0 })
		hi := sidekiq.RetryDelay(count, func(n int) int { return n - 1 })
		fmt.Printf("retry_count %d: %s..%s\n", count, lo, hi.Round(time.Second))
	}
	// Output:
	// retry_count 0: 15s..24s
	// retry_count 1: 16s..34s
	// retry_count 2: 31s..58s
	// retry_count 24: 92h9m51s..92h13m36s
}

// A job made of steps checks Stopping between them: on TERM it saves where
// it is and returns, instead of running on until the shutdown timeout
// cancels it. Outside a worker the channel never closes.
func ExampleStopping() {
	work := func(ctx context.Context, steps []string) (done int) {
		for _, s := range steps {
			if worker.IsStopping(ctx) {
				break // record `done`; the rest runs later
			}
			_ = s // one step's work
			done++
		}
		return done
	}
	fmt.Println(work(context.Background(), []string{"a", "b", "c"}))
	// Output: 3
}
