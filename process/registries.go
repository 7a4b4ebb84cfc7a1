package process

import (
	"github.com/ferrymigrate/ferry/internal/batched"
	"github.com/ferrymigrate/ferry/internal/legacy"
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/worker"
)

// Registries hold every class a process can run, by their Sidekiq and
// GitLab names: Sidekiq job classes, batched background migrations and
// legacy (BackgroundMigrationWorker) migrations.
type Registries struct {
	Workers *worker.Registry
	BBM     *batched.Registry
	BM      *legacy.Registry
}

// NewRegistries returns registries holding ferry's built-in classes:
// Ferry::Noop, the built-in batched migrations (batched.Builtins) and the
// legacy CopyColumn.
func NewRegistries() *Registries {
	r := &Registries{Workers: worker.NewRegistry(), BBM: batched.NewRegistry(), BM: legacy.NewRegistry()}
	jobs.AddNoop(r.Workers)
	legacy.AddCopyColumn(r.BM, legacy.CopyColumn{})
	return r
}
