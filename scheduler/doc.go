// Package scheduler runs functions on cron schedules. It wraps
// robfig/cron/v3 without exposing its types: specs are standard cron
// expressions with an optional leading seconds field, or descriptors such
// as "@every 1s"; a run that is still going when its next tick comes is
// skipped, not stacked; every run gets the scheduler's context.
//
// ferry's batched background migrations use it in every worker process to
// start migrations within a second of being queued (GitLab's cron waits
// for the next minute).
package scheduler
