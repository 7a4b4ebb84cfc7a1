# Loaded by `sidekiq -r test/ruby/app.rb`: a Ruby Sidekiq server that runs
# jobs ferry enqueued. RubyJob records exactly what it received.
require_relative "common"

# Poll the schedule every ~1 s and skip the 10 s initial wait, so a job
# ferry scheduled with --in 1s runs promptly (6.4: Sidekiq.options; 7.x:
# the default configuration).
if Sidekiq.respond_to?(:default_configuration)
  Sidekiq.default_configuration[:poll_interval_average] = 1
else
  Sidekiq.options[:poll_interval_average] = 1
end

class RubyJob
  include Sidekiq::Worker

  def perform(*args)
    Sidekiq.redis do |r|
      r.rpush("ruby:results", JSON.generate({ "jid" => jid, "queue" => "rb", "args" => args }))
    end
  end
end
