package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/sidekiq"
)

type stampArgs struct{}

func (stampArgs) Kind() string { return "StampJob" }

// Job.EnqueuedAt reads enqueued_at by its JSON type: Sidekiq 8 clients
// write integer epoch milliseconds, 6.4 and 7.x float seconds.
func TestJobEnqueuedAtBothUnits(t *testing.T) {
	t.Parallel()
	want := time.UnixMilli(1_795_272_961_997)
	for _, enq := range []string{"1795272961997", "1795272961.997"} {
		var got time.Time
		r := NewRegistry()
		AddWorker(r, WorkFunc[stampArgs](func(_ context.Context, j *Job[stampArgs]) error {
			got = j.EnqueuedAt
			return nil
		}))
		p, err := sidekiq.ParseJob(fmt.Appendf(nil, `{"class":"StampJob","args":[],"jid":"b4a1c8e1f0e2d3c4b5a69788","created_at":1795272961990,"enqueued_at":%s}`, enq))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Perform(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		if got.Sub(want).Abs() > time.Microsecond {
			t.Errorf("enqueued_at %s read as %s, want %s", enq, got, want)
		}
	}
}
