# Shared setup for the Ruby side of ferry's interop tests: Sidekiq 6.4
# (Debian ruby-sidekiq), or 7.2 when run with ../shared/sidekiq7/rb7, talking to
# the Redis database in $REDIS_URL.
require "json"
require "sidekiq"
require "sidekiq/api"

$stdout.sync = true
url = ENV.fetch("REDIS_URL")
Sidekiq.configure_client { |c| c.redis = { url: url } }
Sidekiq.configure_server { |c| c.redis = { url: url } }
Sidekiq.logger.level = Logger::WARN

# Prints one JSON document on stdout for the Go test to decode.
def emit(obj)
  puts JSON.generate(obj)
end
