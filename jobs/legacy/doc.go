// Package legacy is the API for writing your own legacy background
// migration classes: the jobs Rails enqueues as
// BackgroundMigrationWorker.perform_async('ClassName', [args...]) on the
// background_migration queue, run by `ferry worker` and by `ferry bm steal`
// and `ferry bm perform`.
//
// Args are typed: a struct filled positionally from the JSON array, its
// Kind the migration class name. Register migrations in the process's
// registry (process.Registries.BM, or cli.Options.Register in your own main).
package legacy
