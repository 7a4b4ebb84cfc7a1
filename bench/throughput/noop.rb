# A no-op Sidekiq job for the throughput comparison (bench/throughput).
require "sidekiq"

class NoopJob
  include Sidekiq::Worker
  sidekiq_options retry: 1

  def perform(*)
  end
end
