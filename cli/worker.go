package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/sidekiq"
	"github.com/ferrymigrate/ferry/internal/web"
	"github.com/ferrymigrate/ferry/process"
	"github.com/ferrymigrate/ferry/worker"
)

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
		bmConc      int
		bmMax       int
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
	f.IntVar(&bmConc, "bm-concurrency", 0, "legacy migration jobs of one class run at once, cluster-wide (config bm.concurrency, default 1)")
	f.IntVar(&bmMax, "bm-max-running", 0, "legacy migration jobs of all classes run at once, cluster-wide (config bm.max_running, default 4)")
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
		if f.Changed("bm-concurrency") {
			c.BM.Concurrency = bmConc
		}
		if f.Changed("bm-max-running") {
			c.BM.MaxRunning = bmMax
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
	o, err := a.processOptions(ctx)
	if err != nil {
		return err
	}
	p, err := process.New(ctx, o)
	if err != nil {
		if o.HealthListener != nil {
			_ = o.HealthListener.Close()
		}
		if errors.Is(err, process.ErrInvalidOptions) {
			return Usage(err)
		}
		return webErr(err)
	}
	rt := p.Runtime()
	sigCtx, stopSigs := context.WithCancel(ctx)
	defer stopSigs()
	go a.mapSignals(sigCtx, rt)
	if ready != nil {
		go func() {
			select {
			case <-time.After(50 * time.Millisecond):
				ready(rt)
			case <-sigCtx.Done():
			}
		}()
	}
	return p.Run(ctx)
}

// mapSignals maps OS signals other than TERM/INT (handled through ctx) to
// the runtime: the only place ferry traps them.
func (a *App) mapSignals(ctx context.Context, rt *worker.Runtime) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTSTP, syscall.SIGTTIN)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sigs:
			if s == syscall.SIGTSTP {
				rt.Quiet()
			} else {
				rt.DumpGoroutines()
			}
		}
	}
}

// processOptions maps ferry's configuration to the worker process's
// options (package process, the composition root).
func (a *App) processOptions(ctx context.Context) (process.Options, error) {
	qs, err := sidekiq.ParseQueues(a.Cfg.Worker.Queues)
	for i := 0; err == nil && i < len(qs); i++ {
		err = sidekiq.ValidateQueueName(qs[i].Name) // as enqueue checks them
	}
	if err != nil {
		return process.Options{}, Usage(&config.FieldError{Field: "worker.queues", Msg: err.Error()})
	}
	o := process.Options{Registries: a.Reg, Logger: a.Log, SystemdNotify: a.Cfg.Worker.SystemdNotify,
		Worker: worker.Config{
			Queues: qs, Concurrency: a.Cfg.Worker.Concurrency,
			// Timeout and MaxRetries are always passed, so that a configured
			// value (max_retries: 0 included) is never replaced by a default.
			Timeout: new(a.Cfg.Worker.Timeout), MaxRetries: new(a.Cfg.Worker.MaxRetries),
			PollInterval: a.Cfg.Worker.PollInterval, Tag: a.Cfg.Worker.Tag, Version: "ferry " + a.Version,
			Hostname: a.Cfg.Worker.Hostname,
		},
		BBM: batched.Config{TargetBatchDuration: a.Cfg.BBM.TargetBatchDuration, Health: bbmHealth(a)},
		BM: legacy.WorkerConfig{Concurrency: a.Cfg.BM.Concurrency, MaxRunning: a.Cfg.BM.MaxRunning,
			LeaseWait: a.Cfg.BM.LeaseWait, MinInterval: a.Cfg.BM.MinInterval},
	}
	if o.Worker.Hostname == "" {
		o.Worker.Hostname = config.Hostname()
	}
	if o.Redis, err = a.Redis(ctx); err != nil {
		return o, err
	}
	// Every configured database's batched migrations run here, one engine
	// each. One that cannot be reached at start (workers and databases
	// start together after a reboot) is waited for while the rest runs;
	// one that refuses us (password, no such database) stops the start.
	for _, d := range a.Cfg.DatabaseList() {
		pool, err := a.openDB(ctx, d.Name, true)
		if err != nil {
			return o, err
		}
		o.Databases = append(o.Databases, process.Database{Name: d.Name, Pool: pool})
		if d.Name == config.DefaultDatabase {
			o.DB = pool
		}
	}
	if a.Cfg.Web.ServeInWorker {
		o.Web = &web.Config{Listen: a.Cfg.Web.Listen, Auth: webAuth(a.Cfg.Web), Version: a.Version, AllowedHosts: a.Cfg.Web.AllowedHosts}
	}
	// The probes' address is taken before the worker starts, so a taken
	// port fails the start rather than leaving a worker no probe can reach.
	if addr := a.Cfg.Worker.HealthListen; addr != "" {
		if o.HealthListener, err = net.Listen("tcp", addr); err != nil {
			return o, fmt.Errorf("worker.health_listen: %w", err)
		}
	}
	return o, nil
}
