package cli

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ferrymigrate/ferry/queue"
	"github.com/ferrymigrate/ferry/worker"
)

// WorkerEnv is what a feature gets when `ferry worker` (or `ferry demo`)
// starts a worker process: it can register job classes and return a
// background service that runs until ctx is cancelled.
type WorkerEnv struct {
	Workers  *worker.Registry
	Broker   *queue.Broker // Identity(), Client() for pushing jobs
	Redis    redis.UniversalClient
	DB       *pgxpool.Pool // nil when DATABASE_URL is not set
	Log      *zap.Logger
	Identity string
}

// WorkerSetup prepares one feature for a worker process. It may return a
// service (e.g. a scheduler) that runs until ctx is done; nil if none.
type WorkerSetup func(ctx context.Context, a *App, env *WorkerEnv) (service func(ctx context.Context) error, err error)

// workerSetups are run, in order, when a worker process starts.
var workerSetups []WorkerSetup
