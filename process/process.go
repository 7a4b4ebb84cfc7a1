package process

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/ferryschema"
	"github.com/ferrymigrate/ferry/internal/health"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/internal/web"
	"github.com/ferrymigrate/ferry/worker"
)

// ErrInvalidOptions wraps the errors of options that cannot work (e.g.
// a concurrency out of range).
var ErrInvalidOptions = errors.New("process: invalid options")

// Options build a [Process].
type Options struct {
	// Redis is required.
	Redis *redis.Client
	// DB enables migrations; nil runs Sidekiq jobs only. It is the default
	// database ("main"): legacy migrations, the probes and the web UI's
	// audit log use it.
	DB *pgxpool.Pool
	// Databases, when set, are every database whose batched migrations the
	// process runs, one engine each (GitLab's main and ci). DB, when nil,
	// is then the one named "main", else the first. Unset, DB alone is
	// the database "main".
	Databases []Database
	// Registries default to [NewRegistries].
	Registries *Registries
	Logger     *zap.Logger
	// Worker configures the runtime; its Redis, Registry and Logger are
	// set from the fields above.
	Worker worker.Config
	// BBM configures the batched migration engine (TargetBatchDuration,
	// Health); Registry, Logger and Identity are set here.
	BBM batched.Config
	// BM configures BackgroundMigrationWorker (limits, MinInterval);
	// Runner, Client, Redis and Logger are set here.
	BM legacy.WorkerConfig
	// Web, when set, serves the admin UI and /metrics from the process on
	// Web.Listen; its connections, logger and actions are set here.
	Web *web.Config
	// HealthListener, when set, serves /liveness and /readiness on it.
	HealthListener net.Listener
	// SystemdNotify speaks systemd's notify protocol (Type=notify).
	SystemdNotify bool
}

// Database is one named database of [Options.Databases].
type Database struct {
	Name string
	Pool *pgxpool.Pool
}

// Process is a built worker process; Run runs it.
type Process struct {
	o        Options
	rt       *worker.Runtime
	services []func(context.Context) error
	closers  []func()
	// work is the context of work the process starts on request (a
	// finalize from the admin UI): cancelled when the runtime is asked to
	// stop, however it was asked, so it never holds the exit.
	work       context.Context
	cancelWork context.CancelFunc
}

// New builds a process: the runtime, ferry's tables when there is a
// database, and the services of each feature.
func New(ctx context.Context, o Options) (*Process, error) {
	if o.Redis == nil {
		return nil, errors.New("process: Options.Redis is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Registries == nil {
		o.Registries = NewRegistries()
	}
	o.Worker.Redis, o.Worker.Registry, o.Worker.Logger = o.Redis, o.Registries.Workers, o.Logger
	rt, err := worker.New(o.Worker)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	if len(o.Databases) == 0 && o.DB != nil {
		o.Databases = []Database{{Name: batched.DefaultDatabase, Pool: o.DB}}
	}
	for _, d := range o.Databases {
		if d.Pool == nil || d.Name == "" {
			return nil, fmt.Errorf("%w: database %q needs a name and a pool", ErrInvalidOptions, d.Name)
		}
		if o.DB == nil && d.Name == batched.DefaultDatabase {
			o.DB = d.Pool
		}
	}
	if o.DB == nil && len(o.Databases) > 0 {
		o.DB = o.Databases[0].Pool
	}
	p := &Process{o: o, rt: rt}
	p.work, p.cancelWork = context.WithCancel(context.WithoutCancel(ctx))
	p.closers = append(p.closers, p.cancelWork)
	for _, d := range o.Databases {
		err := ferryschema.Ensure(ctx, d.Pool, o.Logger)
		switch {
		case err == nil:
		case d.Pool == o.DB && !batched.IsConnLoss(err):
			return nil, err // refused, not away: a setting to fix
		default:
			// A database being away (it starts with us after a reboot)
			// must not stop the rest: its migrations set up its tables
			// once it answers (Service).
			o.Logger.Warn("cannot set up ferry's tables in a database; its batched migrations wait for it",
				zap.String("database", d.Name), zap.Error(err))
		}
	}
	for _, add := range []func(context.Context) error{p.addBBM, p.addBM, p.addWeb, p.addHealth} {
		if err := add(ctx); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

// Runtime is the process's Sidekiq runtime (Quiet, Stop, Health).
func (p *Process) Runtime() *worker.Runtime { return p.rt }

// Run runs the runtime and every service until ctx is done, then stops
// them: running jobs get the runtime's Timeout, then go back to their
// queues.
func (p *Process) Run(ctx context.Context) error {
	defer p.close()
	svcCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, svc := range p.services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc(svcCtx); err != nil && !errors.Is(err, context.Canceled) {
				p.o.Logger.Error("background service stopped", zap.Error(err))
			}
		}()
	}
	go func() {
		// A stop, however requested, ends work started on request at once:
		// it is not a job and has no drain. svcCtx ends when Run returns
		// without a stop (it failed to start).
		select {
		case <-p.rt.Stopped():
		case <-svcCtx.Done():
		}
		p.cancelWork()
	}()
	err := p.rt.Run(ctx)
	cancel()
	// A service waiting on Redis or the database when cancelled returns
	// only at its client's read timeout (go-redis does not abandon a read
	// on cancellation), which would take the process past the runtime's
	// Timeout; it ends on its own, or with the process.
	servicesDone := make(chan struct{})
	go func() { wg.Wait(); close(servicesDone) }()
	select {
	case <-servicesDone:
	case <-time.After(serviceGrace):
		p.o.Logger.Warn("a background service is still waiting on Redis or the database; stopping without it")
	}
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// serviceGrace is how long Run waits for the services once the runtime
// returned: they only need to see the cancellation.
const serviceGrace = 500 * time.Millisecond

func (p *Process) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
	p.closers = nil
}

// addBBM runs batched background migrations: the scheduler ticks and the
// execution jobs.
func (p *Process) addBBM(context.Context) error {
	if len(p.o.Databases) == 0 {
		p.o.Logger.Info("no database: batched background migrations are not run by this worker")
		return nil
	}
	var dbs []batched.Database
	for _, d := range p.o.Databases {
		cfg := p.o.BBM
		cfg.Logger, cfg.Registry, cfg.Identity = p.o.Logger, p.o.Registries.BBM, p.rt.Identity()
		if len(p.o.Databases) > 1 {
			cfg.Logger, cfg.Database = p.o.Logger.With(zap.String("database", d.Name)), d.Name
		}
		e := batched.NewEngine(d.Pool, cfg)
		// Closed after the runtime's jobs returned (Run), not with the
		// scheduler: batches still running need the engine's session.
		p.closers = append(p.closers, e.Close)
		dbs = append(dbs, batched.Database{Name: d.Name, Engine: e})
	}
	svc := batched.NewMultiService(dbs, p.o.Redis, p.o.Logger)
	if err := svc.Register(p.o.Registries.Workers); err != nil {
		return err
	}
	p.services = append(p.services, svc.Run)
	return nil
}

// addBM runs BackgroundMigrationWorker jobs, unless the application
// registered its own class of that name.
func (p *Process) addBM(ctx context.Context) error {
	if p.o.Registries.Workers.Has(legacy.WorkerClass) {
		return nil
	}
	cfg := p.o.BM
	cfg.Runner, cfg.Client, cfg.Redis, cfg.Logger = p.bmRunner(), p.rt.Broker().Client(), p.o.Redis, p.o.Logger
	if p.o.DB != nil {
		// The signals and the pacing clock of batched migrations, so
		// both kinds hold back for the same reasons and share one duty
		// cycle; GitLab's own legacy check (replication slots) as well.
		if cfg.Health == nil {
			cfg.Health = legacy.AllHealthy(batched.DatabaseHealth(p.o.DB, p.o.BBM.Health),
				legacy.ReplicationLagCheck(p.o.DB, legacy.DefaultMaxReplicationLag))
		}
		if sp := batched.NewSharedPace(p.o.DB, p.o.BBM.Health); cfg.Pacer == nil && sp != nil {
			cfg.Pacer = sp
		}
	}
	if err := legacy.AddWorker(p.o.Registries.Workers, cfg); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	p.warnUnconsumedBM(ctx)
	return nil
}

// warnUnconsumedBM says, at start, when BackgroundMigrationWorker jobs wait
// in a queue this worker does not fetch: GitLab 16+ routes every job to
// `default` unless routing rules say otherwise, and such jobs would sit
// there unseen.
func (p *Process) warnUnconsumedBM(ctx context.Context) {
	consumed := map[string]bool{}
	if len(p.o.Worker.Queues) == 0 {
		consumed[legacy.QueueName] = true // the runtime's default
	}
	for _, q := range p.o.Worker.Queues {
		consumed[q.Name] = true
	}
	var missing []string
	for _, q := range legacy.DefaultQueues {
		if !consumed[q] {
			missing = append(missing, q)
		}
	}
	if len(missing) == 0 {
		return
	}
	waiting, err := legacy.Waiting(ctx, p.o.Redis, missing)
	if err != nil {
		p.o.Logger.Debug("could not look for legacy migration jobs in other queues", zap.Error(err))
		return
	}
	for _, q := range missing {
		if n := waiting[q]; n > 0 {
			p.o.Logger.Warn("BackgroundMigrationWorker jobs wait in a queue this worker does not consume; "+
				"add it to --queues (worker.queues) or run `ferry bm steal CLASS --queue "+q+"`",
				zap.String("queue", q), zap.Int("jobs_seen", n))
		}
	}
}

func (p *Process) bmRunner() *legacy.Runner {
	r := &legacy.Runner{Registry: p.o.Registries.BM, Logger: p.o.Logger}
	if p.o.DB != nil {
		r.DB = p.o.DB // a nil pool in the interface would look configured
	}
	return r
}

// addWeb serves the admin UI and /metrics from the process.
func (p *Process) addWeb(ctx context.Context) error {
	if p.o.Web == nil {
		return nil
	}
	cfg := *p.o.Web
	cfg.Redis, cfg.Logger = p.o.Redis, p.o.Logger
	cfg.Stealer = Stealer{&legacy.Coordinator{Redis: p.o.Redis, Logger: p.o.Logger, Runner: p.bmRunner()}}
	var fins []*web.EngineMigrations
	cfg.DB = p.o.DB
	for _, d := range p.o.Databases {
		bc := p.o.BBM
		bc.Logger, bc.Registry, bc.Identity = p.o.Logger, p.o.Registries.BBM, p.rt.Identity()+":web:"+strconv.Itoa(os.Getpid())
		if len(p.o.Databases) > 1 {
			bc.Database = d.Name
		}
		e := batched.NewEngine(d.Pool, bc)
		p.closers = append(p.closers, e.Close)
		fin := web.NewEngineMigrations(p.work, e, p.o.Logger)
		fins = append(fins, fin)
		cfg.Databases = append(cfg.Databases, web.Database{Name: d.Name, DB: d.Pool, Migrations: fin})
	}
	srv, err := web.New(cfg)
	if err != nil {
		return err
	}
	p.services = append(p.services, func(ctx context.Context) error {
		err := srv.Run(ctx, nil)
		for _, fin := range fins {
			fin.Wait()
		}
		return err
	})
	return nil
}

// addHealth serves the probes and speaks systemd's notify protocol.
func (p *Process) addHealth(context.Context) error {
	probes := &health.Probes{Runtime: p.rt, Redis: p.o.Redis, DB: p.o.DB}
	if ln := p.o.HealthListener; ln != nil {
		p.services = append(p.services, func(ctx context.Context) error { return health.Serve(ctx, ln, probes.Handler(), p.o.Logger) })
	}
	if p.o.SystemdNotify {
		p.services = append(p.services, func(ctx context.Context) error { probes.Notify(ctx, p.o.Logger); return nil })
	}
	return nil
}

// Stealer is internal/legacy's steal behind the admin UI's button: the queued and
// scheduled jobs of a legacy class run inline in this process.
type Stealer struct{ Co *legacy.Coordinator }

// Steal implements web's stealer.
func (s Stealer) Steal(ctx context.Context, class string) (int, error) {
	res, err := s.Co.Steal(ctx, class, legacy.StealOptions{})
	return res.Performed, err
}
