package queue

import "github.com/redis/go-redis/v9"

// All Lua scripts ferry runs live in this file. go-redis runs them with
// EVALSHA and falls back to EVAL on NOSCRIPT.

// fetchScript takes up to ARGV[1] jobs from the queues in KEYS order and
// moves each into that queue's in-flight list in the same atomic step, so a
// job is always either in a public queue or in a private list.
// KEYS: queue1, inflight1, queue2, inflight2, ...
// Returns a flat list: queue index (1-based), job, queue index, job, ...
var fetchScript = redis.NewScript(`
local max = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  if max <= 0 then break end
  local jobs = redis.call('RPOP', KEYS[i], max)
  if jobs then
    redis.call('LPUSH', KEYS[i+1], unpack(jobs))
    local qi = (i + 1) / 2
    for _, j in ipairs(jobs) do
      out[#out+1] = qi
      out[#out+1] = j
    end
    max = max - #jobs
  end
end
return out
`)

// settleScript removes one exact member from a private list and, only if it
// was still there, writes its successor: a push to a queue, a retry entry or
// a dead entry (with both of Sidekiq's dead-set trims, protocol §2.6).
// Doing both in one script means a job that another process already
// recovered is never written twice.
// KEYS[1] private list, KEYS[2] destination (queue list or zset), KEYS[3] "queues"
// ARGV[1] original bytes, ARGV[2] new bytes, ARGV[3] op (lpush|rpush|zadd|dead|drop),
// ARGV[4] queue name or score, ARGV[5] dead cutoff score, ARGV[6] dead max jobs
var settleScript = redis.NewScript(`
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
local op = ARGV[3]
if op == 'lpush' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('LPUSH', KEYS[2], ARGV[2])
elseif op == 'rpush' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('RPUSH', KEYS[2], ARGV[2])
elseif op == 'zadd' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
elseif op == 'dead' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[6]))
end
return 1
`)

// dueScript moves up to ARGV[2] members of a sorted set whose score is at or
// before ARGV[1] into a private staging list and returns them. It is
// Sidekiq's pop-one Lua (protocol §2.5) widened to a batch, with a staging
// list so that a crash before the push loses nothing.
// KEYS[1] zset (retry or schedule), KEYS[2] staging list.
var dueScript = redis.NewScript(`
local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #jobs == 0 then return jobs end
redis.call('ZREM', KEYS[1], unpack(jobs))
redis.call('RPUSH', KEYS[2], unpack(jobs))
return jobs
`)

// deadAddScript adds a member to the dead set and runs both trims.
// KEYS[1] dead; ARGV[1] score, ARGV[2] member, ARGV[3] cutoff, ARGV[4] max jobs.
var deadAddScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]))
return 1
`)

// unlockScript releases a lock only if we still hold it.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
