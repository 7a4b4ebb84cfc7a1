// Package jobs holds ferry's built-in Sidekiq job classes (Ferry::Noop) and,
// in its subpackages, the API for writing your own migration classes:
// jobs/batched for batched background migrations (GitLab's
// batched_background_migrations) and jobs/legacy for legacy ones
// (BackgroundMigrationWorker). Their engines live under internal/.
//
// All three kinds register the same way, in a registry the process builds
// (process.NewRegistries): worker.AddWorker, batched.Add, legacy.Add, each
// keyed by the Sidekiq or GitLab class name.
package jobs
