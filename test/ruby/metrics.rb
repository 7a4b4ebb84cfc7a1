# Reads Sidekiq 7+'s execution metrics as its Metrics page does
# (Sidekiq::Metrics::Query, last 60 minutes). Run with Sidekiq 7
# (../shared/sidekiq7/rb7). Usage: metrics.rb CLASS ; prints
# {"version", "top": {class: totals}, "job": {"totals", "histogram"}}
require_relative "common"
require "sidekiq/metrics/query"

klass = ARGV.fetch(0)
query = Sidekiq::Metrics::Query.new
job = query.for_job(klass).job_results[klass]
emit(
  "version" => Sidekiq::VERSION,
  "top" => query.top_jobs.job_results.transform_values(&:totals),
  "job" => { "totals" => job.totals, "histogram" => job.hist.values.transpose.map(&:sum) },
)
