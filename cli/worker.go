package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/health"
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/queue"
	"github.com/ferrymigrate/ferry/worker"
)

func init() {
	builtins = append(builtins, func(r *Registries) { jobs.AddNoop(r.Workers) })
	commands = append(commands, newWorkerCmd)
}

func newWorkerCmd(a *App) *cobra.Command {
	var (
		concurrency int
		queues      string
		timeout     time.Duration
		tag         string
		poll        time.Duration
		web         bool
		webListen   string
		procs       int
		health      string
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a Sidekiq-compatible worker process",
		Long: `Run a worker process that fetches Sidekiq jobs from Redis and runs the
registered classes (batched and legacy background migrations, Ferry::Noop,
your own). Jobs are fetched reliably: each is kept in a private list until
it finishes, and the jobs of a killed worker are pushed back to their queues
by the other workers within a minute.

Signals: TSTP = quiet (stop fetching), TERM/INT = stop within --timeout
(unfinished jobs are pushed back to their queues), TTIN = log all
goroutine stacks. The Sidekiq Web UI's Quiet/Stop buttons work too.`,
		Example: `  ferry worker --concurrency 10 --queues background_migration
  ferry worker --queues critical:3,default:1 --timeout 60s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return a.runWorker(ctx, nil)
		},
	}
	f := cmd.Flags()
	f.IntVarP(&concurrency, "concurrency", "c", 0, "jobs run at once (default 10)")
	f.StringVarP(&queues, "queues", "q", "", `queues to fetch, "a,b" (strict order) or "a:3,b:1" (weighted); default background_migration`)
	f.DurationVarP(&timeout, "timeout", "t", 0, "shutdown grace period before running jobs are pushed back (default 25s)")
	f.StringVarP(&tag, "tag", "g", "", "tag shown on the Sidekiq Busy page")
	f.DurationVar(&poll, "poll-interval", 0, "average scheduled/retry poll interval per process (default 5s, as Sidekiq)")
	f.IntVar(&procs, "procs", 0, "OS threads running Go code (GOMAXPROCS; default all cores). 1 is faster when Redis shares a small host")
	f.BoolVar(&web, "web", false, "also serve the admin UI and /metrics (config web.serve_in_worker)")
	f.StringVar(&webListen, "web-listen", "", "address for --web (default web.listen, 127.0.0.1:7373)")
	f.StringVar(&health, "health-listen", "", "serve /liveness and /readiness probes on this address (config worker.health_listen)")
	a.PreValidate(cmd, func(c *config.Config) {
		if f.Changed("concurrency") {
			c.Worker.Concurrency = concurrency
		}
		if f.Changed("queues") {
			c.Worker.Queues = queues
		}
		if f.Changed("timeout") {
			c.Worker.Timeout = timeout
		}
		if f.Changed("tag") {
			c.Worker.Tag = tag
		}
		if f.Changed("poll-interval") {
			c.Worker.PollInterval = poll
		}
		if f.Changed("procs") {
			c.Worker.Procs = procs
		}
		if f.Changed("web") {
			c.Web.ServeInWorker = web
		}
		if f.Changed("health-listen") {
			c.Worker.HealthListen = health
		}
		if f.Changed("web-listen") {
			c.Web.Listen = webListen
			c.Web.ServeInWorker = true
		}
	})
	return cmd
}

// runWorker runs a worker process until ctx is done. ready, if not nil, is
// called with the runtime once it has started (used by `ferry demo`).
func (a *App) runWorker(ctx context.Context, ready func(*worker.Runtime)) error {
	if n := a.Cfg.Worker.Procs; n > 0 {
		// The worker command owns its process, like its signal handling.
		prev := runtime.GOMAXPROCS(n)
		defer runtime.GOMAXPROCS(prev)
	}
	qs, err := queue.ParseQueues(a.Cfg.Worker.Queues)
	for i := 0; err == nil && i < len(qs); i++ {
		err = queue.ValidateQueueName(qs[i].Name) // as enqueue checks them
	}
	if err != nil {
		return Usage(&config.FieldError{Field: "worker.queues", Msg: err.Error()})
	}
	rdb, err := a.Redis(ctx)
	if err != nil {
		return err
	}
	cfg := worker.Config{
		Redis: rdb, Registry: a.Reg.Workers, Queues: qs,
		// Timeout and MaxRetries are always passed, so that a configured
		// value (max_retries: 0 included) is never replaced by a default.
		Concurrency: a.Cfg.Worker.Concurrency, Timeout: new(a.Cfg.Worker.Timeout),
		PollInterval: a.Cfg.Worker.PollInterval, MaxRetries: new(a.Cfg.Worker.MaxRetries),
		Tag: a.Cfg.Worker.Tag, Version: "ferry " + a.Version, Hostname: a.Cfg.Worker.Hostname,
		Logger: a.Log,
	}
	if cfg.Hostname == "" {
		cfg.Hostname = config.Hostname()
	}
	rt, err := worker.New(cfg)
	if err != nil {
		return Usage(err)
	}
	env := &WorkerEnv{Workers: a.Reg.Workers, Broker: rt.Broker(), Redis: rdb, Log: a.Log, Identity: rt.Identity()}
	if a.Cfg.DatabaseURL != "" {
		if env.DB, err = a.DB(ctx); err != nil {
			return err
		}
	}
	svcCtx, cancelSvc := context.WithCancel(ctx)
	defer cancelSvc()
	services, err := a.healthServices(rt, rdb, env)
	if err != nil {
		return err
	}
	for _, setup := range workerSetups {
		svc, err := setup(svcCtx, a, env)
		if err != nil {
			return err
		}
		if svc != nil {
			services = append(services, svc)
		}
	}
	// OS signals other than TERM/INT (handled through ctx) are mapped to
	// the runtime here, the only place ferry traps them.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTSTP, syscall.SIGTTIN)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case <-svcCtx.Done():
				return
			case s := <-sigs:
				if s == syscall.SIGTSTP {
					rt.Quiet()
				} else {
					rt.DumpGoroutines()
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for _, svc := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc(svcCtx); err != nil && !errors.Is(err, context.Canceled) {
				a.Log.Error("background service stopped", zap.Error(err))
			}
		}()
	}
	if ready != nil {
		go func() {
			select {
			case <-time.After(50 * time.Millisecond):
				ready(rt)
			case <-svcCtx.Done():
			}
		}()
	}
	err = rt.Run(ctx)
	cancelSvc()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// healthServices are the probes process managers use: HTTP liveness and
// readiness with --health-listen, systemd's notify protocol under
// Type=notify. The address is taken before the worker starts, so a taken
// port fails the start rather than leaving a worker no probe can reach.
func (a *App) healthServices(rt *worker.Runtime, rdb *redis.Client, env *WorkerEnv) ([]func(context.Context) error, error) {
	probes := &health.Probes{Runtime: rt, Redis: rdb, DB: env.DB}
	var out []func(context.Context) error
	if addr := a.Cfg.Worker.HealthListen; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("worker.health_listen: %w", err)
		}
		out = append(out, func(ctx context.Context) error { return health.Serve(ctx, ln, probes.Handler(), a.Log) })
	}
	if a.Cfg.Worker.SystemdNotify {
		out = append(out, func(ctx context.Context) error { probes.Notify(ctx, a.Log); return nil })
	}
	return out, nil
}
