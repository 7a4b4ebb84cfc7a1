package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/jobs"
)

func newEnqueueCmd(a *App) *cobra.Command {
	var (
		q     string
		in    time.Duration
		at    string
		retry string
	)
	cmd := &cobra.Command{
		Use:   "enqueue CLASS ARGS_JSON",
		Short: "Push a Sidekiq job (for a Ruby or ferry worker)",
		Long: `Push one Sidekiq job to Redis exactly as a Ruby client would (SADD queues +
LPUSH queue:<q>, or ZADD schedule for --in/--at). ARGS_JSON must be a JSON
array; integers of any size are kept exactly. Prints the job id.`,
		Example: `  ferry enqueue Ferry::Noop '[]'
  ferry enqueue BackgroundMigrationWorker '["CopyColumn",["events","id","id_big",1,1000]]'
  ferry enqueue HardWorker '[1,"two"]' --queue default --in 5m --retry 3`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			class, raw := args[0], json.RawMessage(args[1])
			if strings.TrimSpace(class) == "" {
				return Usagef("CLASS must not be empty")
			}
			if !json.Valid(raw) {
				return Usagef("ARGS_JSON is not valid JSON: %.60q", args[1])
			}
			var arr []json.RawMessage
			if err := json.Unmarshal(raw, &arr); err != nil {
				return Usagef("ARGS_JSON must be a JSON array (Sidekiq's positional args), e.g. '[1,\"two\"]'; got %.60s", args[1])
			}
			opts := sidekiq.PushOptions{Queue: q} // Push defaults "" to "default"
			if q == "" && (class == legacy.WorkerClass || class == jobs.NoopClass) {
				// Where `ferry worker` and `ferry bm` look by default, as
				// GitLab's BackgroundMigrationWorker declares; Ferry::Noop
				// goes there too, so that the smoke test of a deployment
				// (enqueue, then see a plain `ferry worker` run it) works.
				opts.Queue = legacy.QueueName
			}
			switch {
			case retry == "":
			case retry == "true" || retry == "false":
				opts.Retry = json.RawMessage(retry)
			default:
				n, err := strconv.Atoi(retry)
				if err != nil || n < 0 {
					return Usagef("--retry must be a non-negative integer, true or false, got %q", retry)
				}
				opts.Retry = sidekiq.RetryTimes(n)
			}
			if in != 0 && at != "" {
				return Usagef("use either --in or --at, not both")
			}
			if in < 0 {
				return Usagef("--in must not be negative, got %s", in)
			}
			if in > 0 {
				opts.At = time.Now().Add(in)
			}
			if at != "" {
				t, err := parseTime(at)
				if err != nil {
					return Usage(err)
				}
				opts.At = t
			}
			// The library checks again; checking first means bad input is
			// told as such even when Redis is down.
			if err := sidekiq.ValidatePush(class, opts); err != nil {
				return Usage(err)
			}
			if err := sidekiq.ValidateArgs(raw); err != nil {
				return Usagef("ARGS_JSON: %v", err)
			}
			if class == legacy.WorkerClass {
				if err := a.checkBMWorkerArgs(cmd.Context(), arr); err != nil {
					return err
				}
			}
			rdb, err := a.Redis(cmd.Context())
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			r := a.Cfg.Redis
			if r.WaitReplicas > 0 {
				// Replicas that never confirm (all down) end the command
				// with an error rather than hang it.
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
			}
			jid, err := sidekiq.NewClient(rdb, sidekiq.WaitForReplicas(r.WaitReplicas, r.WaitTimeout)).Push(ctx, class, raw, opts)
			if errors.Is(err, sidekiq.ErrInvalidJob) || errors.Is(err, sidekiq.ErrInvalidArgs) {
				return Usage(err)
			}
			if errors.Is(err, sidekiq.ErrNotReplicated) && jid != "" {
				fmt.Fprintln(a.Out, jid)
				return fmt.Errorf("job %s was pushed but no replica confirmed it (redis.wait_replicas): it may be lost in a failover; check for it before pushing it again: %w", jid, err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(a.Out, jid)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&q, "queue", "q", "", "queue (default \"default\"; \"background_migration\" for BackgroundMigrationWorker and Ferry::Noop)")
	f.DurationVar(&in, "in", 0, "run after this delay, e.g. 30s or 5m")
	f.StringVar(&at, "at", "", "run at this time: RFC 3339 (2026-01-02T15:04:05Z) or epoch seconds")
	f.StringVar(&retry, "retry", "", "retry option: N, true or false (default true = 25 retries)")
	return cmd
}

// checkBMWorkerArgs refuses a BackgroundMigrationWorker job that no worker
// could run: args not [MigrationClassName, [args...], lease_attempts?],
// or arguments of a class ferry has that do not fit it (count, types).
// Such a job went to Redis with exit 0 and only showed up later in the
// dead set. A class ferry does not have is left alone: the Ruby app's
// worker may have it.
func (a *App) checkBMWorkerArgs(ctx context.Context, arr []json.RawMessage) error {
	const shape = `BackgroundMigrationWorker args are [MigrationClassName, [args...], lease_attempts?], e.g. '["CopyColumn",["events","id","id_big",1,1000]]'`
	if len(arr) < 1 || len(arr) > 3 {
		return Usagef("ARGS_JSON: %s; got %d elements", shape, len(arr))
	}
	var migration string
	if err := json.Unmarshal(arr[0], &migration); err != nil || strings.TrimSpace(migration) == "" {
		return Usagef("ARGS_JSON: %s; the first element must be a class name, got %.60s", shape, arr[0])
	}
	var margs json.RawMessage
	if len(arr) > 1 && string(arr[1]) != "null" {
		var list []json.RawMessage
		if err := json.Unmarshal(arr[1], &list); err != nil {
			return Usagef("ARGS_JSON: %s; the second element must be an array, got %.60s", shape, arr[1])
		}
		margs = arr[1]
	}
	if len(arr) > 2 {
		var n int
		if err := json.Unmarshal(arr[2], &n); err != nil || n < 0 {
			return Usagef("ARGS_JSON: %s; lease_attempts must be a non-negative integer, got %.60s", shape, arr[2])
		}
	}
	if !a.Reg.BM.Has(migration) {
		return nil
	}
	// Without a database only the decoding is checked (count and types);
	// the identifiers are checked against the catalog when the job runs.
	_, err := (&legacy.Runner{Registry: a.Reg.BM, Logger: a.Log}).Prepare(ctx, migration, margs)
	if err != nil && legacy.IsBadInput(err) {
		return Usagef("ARGS_JSON: %v", err)
	}
	return nil
}

func parseTime(s string) (time.Time, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		// Nanoseconds since 1970 in an int64 reach the year 2262; past
		// that (and for NaN or Inf) the conversion gave a garbage time.
		if !(math.Abs(f) < math.MaxInt64/1e9) {
			return time.Time{}, fmt.Errorf("--at %q: epoch seconds out of range", s)
		}
		return time.Unix(0, int64(f*1e9)), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--at %q is not a time: use RFC 3339 (2026-01-02T15:04:05Z) or epoch seconds", s)
}
