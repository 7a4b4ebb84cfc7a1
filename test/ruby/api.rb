# Drives Sidekiq's Ruby client and API (the same calls the Web UI and
# operators' consoles make) against ferry's data. Usage:
#   ruby api.rb COMMAND [ARGS...]   prints one JSON document
require_relative "common"

BIG = 2**70
INTEROP_ARGS = [BIG, { "nested" => [1, { "x" => "y" }] }, "<b>&"].freeze

def entry_json(e)
  item = e.item
  {
    "jid" => e.jid,
    "klass" => e.klass,
    "display_class" => e.display_class,
    "queue" => e.queue,
    "args" => e.args,
    "args_match_interop" => e.args == INTEROP_ARGS,
    "score" => e.score,
    "error_class" => item["error_class"],
    "error_message" => item["error_message"],
    "retry_count" => item["retry_count"],
    "failed_at_class" => item["failed_at"].class.name,
    "failed_at" => item["failed_at"],
    "error?" => e.error?,
  }
end

def process_json(p)
  {
    "identity" => p.identity,
    "hostname" => p["hostname"],
    "pid" => p["pid"],
    "tag" => p.tag,
    "labels" => p.labels,
    "concurrency" => p["concurrency"],
    "queues" => p["queues"],
    "busy" => p["busy"],
    "quiet" => p["quiet"],
    "stopping" => p.stopping?,
    "beat_class" => p["beat"].class.name,
    "started_at_class" => p["started_at"].class.name,
    "weights" => p["weights"],
    "version" => p["version"],
    "capsules" => p["capsules"],
  }
end

def find_process(identity)
  Sidekiq::ProcessSet.new.find { |p| p.identity == identity } or abort("process #{identity} not in Sidekiq::ProcessSet")
end

def find_entry(set, jid)
  set.find { |e| e.jid == jid } or abort("jid #{jid} not in #{set.name}")
end

cmd = ARGV.shift
case cmd
when "push_interop"
  # Everything a Ruby application would send ferry: a single push with
  # awkward args, a bulk push, a scheduled job and a job of a class ferry
  # does not know.
  single = Sidekiq::Client.push("class" => "Ferry::Noop", "queue" => "interop", "args" => INTEROP_ARGS)
  bulk = Sidekiq::Client.push_bulk("class" => "Ferry::Noop", "queue" => "interop", "args" => (0...50).map { |i| [i, "bulk"] })
  scheduled = Sidekiq::Client.push("class" => "Ferry::Noop", "queue" => "interop", "args" => ["later"], "at" => Time.now.to_f + 1)
  failing = Sidekiq::Client.push("class" => "Nope::Missing", "queue" => "interop", "args" => INTEROP_ARGS)
  emit("single" => single, "bulk" => bulk, "scheduled" => scheduled, "failing" => failing)
when "retry_entry"
  emit(entry_json(find_entry(Sidekiq::RetrySet.new, ARGV.fetch(0))))
when "retry_now"
  # The Web UI's "Retry Now" button.
  find_entry(Sidekiq::RetrySet.new, ARGV.fetch(0)).retry
  emit("ok" => true)
when "snapshot"
  queues = {}
  Sidekiq::Queue.all.each { |q| queues[q.name] = { "size" => q.size, "latency" => q.latency } }
  ARGV.each do |name|
    q = Sidekiq::Queue.new(name)
    queues[name] = { "size" => q.size, "latency" => q.latency }
  end
  stats = Sidekiq::Stats.new
  emit(
    "processes" => Sidekiq::ProcessSet.new.map { |p| process_json(p) },
    "queues" => queues,
    "retries" => Sidekiq::RetrySet.new.map { |e| entry_json(e) },
    "dead" => Sidekiq::DeadSet.new.map { |e| entry_json(e) },
    "scheduled" => Sidekiq::ScheduledSet.new.map { |e| entry_json(e) },
    "stats" => { "processed" => stats.processed, "failed" => stats.failed, "enqueued" => stats.enqueued,
                 "retry_size" => stats.retry_size, "dead_size" => stats.dead_size,
                 "scheduled_size" => stats.scheduled_size, "processes_size" => stats.processes_size },
  )
when "quiet"
  find_process(ARGV.fetch(0)).quiet!
  emit("ok" => true)
when "stop"
  find_process(ARGV.fetch(0)).stop!
  emit("ok" => true)
else
  abort("unknown command #{cmd.inspect}")
end
