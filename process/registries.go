package process

import (
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/jobs/bbm"
	"github.com/ferrymigrate/ferry/jobs/bm"
	"github.com/ferrymigrate/ferry/worker"
)

// Registries hold every class a process can run, by their Sidekiq and
// GitLab names: Sidekiq job classes, batched background migrations and
// legacy (BackgroundMigrationWorker) migrations.
type Registries struct {
	Workers *worker.Registry
	BBM     *bbm.Registry
	BM      *bm.Registry
}

// NewRegistries returns registries holding ferry's built-in classes:
// Ferry::Noop, the built-in batched migrations (bbm.Builtins) and the
// legacy CopyColumn.
func NewRegistries() *Registries {
	r := &Registries{Workers: worker.NewRegistry(), BBM: bbm.NewRegistry(), BM: bm.NewRegistry()}
	jobs.AddNoop(r.Workers)
	bm.AddCopyColumn(r.BM, bm.CopyColumn{})
	return r
}
