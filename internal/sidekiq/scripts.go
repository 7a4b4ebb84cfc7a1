package sidekiq

import "github.com/redis/go-redis/v9"

// All Lua scripts ferry runs live in this file. go-redis runs them with
// EVALSHA and falls back to EVAL on NOSCRIPT.

// fetchScript refreshes this process's liveness, then takes up to ARGV[1]
// jobs from the queues in KEYS order and moves each into that queue's
// in-flight list in the same atomic step, so a job is always either in a
// public queue or in a private list, and never lands in a private list
// whose owner looks dead.
// KEYS: alive key, missing-since hash, then queue1, inflight1, queue2, inflight2, ...
// ARGV[1] max jobs, ARGV[2] number of acks n, ARGV[3] alive TTL (ms),
// ARGV[4] identity, ARGV[5] alive value, then n pairs (inflight KEYS index,
// exact bytes): finished jobs to LREM, so that acks ride along with the
// fetch instead of costing their own round trip.
// Returns a flat list: queue index (1-based), job, queue index, job, ...
//
// The SET must be the script's first write: with maxmemory and noeviction,
// Redis refuses a script's first write that may grow memory (SET) but lets
// later ones through, so SET first makes the whole fetch fail under OOM,
// exactly like the heartbeat, instead of fetching without refreshing.
var fetchScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[4])
local max = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
for a = 0, nacks - 1 do
  redis.call('LREM', KEYS[tonumber(ARGV[6 + 2*a])], -1, ARGV[7 + 2*a])
end
local out = {}
for i = 3, #KEYS, 2 do
  if max <= 0 then break end
  local jobs = redis.call('RPOP', KEYS[i], max)
  if jobs then
    redis.call('LPUSH', KEYS[i+1], unpack(jobs))
    local qi = (i - 1) / 2
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
// When recovering another process's list: KEYS[4] its alive key, KEYS[5]
// the missing-since hash, ARGV[7] its identity. Then it returns -1 and
// touches nothing if that process refreshed its liveness since recovery
// decided it was dead (alive key back, or missing-since entry cleared), so
// a process that comes back keeps its jobs: checked here, atomically with
// the move, not once per pass.
var settleScript = redis.NewScript(`
if KEYS[4] and (redis.call('EXISTS', KEYS[4]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[7]) == 0) then
  return -1
end
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

// observeMissingScript records when a process was first seen without its
// alive key and says how long recovery must still wait before taking its
// jobs (0: the grace has passed). It returns -1, and forgets any earlier
// sighting, when the key exists. Check and record are one atomic step, so
// a sighting never survives a refresh (which deletes it) that happened
// in between.
// KEYS[1] alive key, KEYS[2] missing-since hash
// ARGV[1] identity, ARGV[2] Redis server time (ms), ARGV[3] grace (ms)
var observeMissingScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return -1
end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
local left = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) + tonumber(ARGV[3]) - tonumber(ARGV[2])
if left < 0 then return 0 end
return left
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

// stealLuaLib is shared by the steal scripts. match() decides whether a raw
// Sidekiq payload is a job of worker class W whose first argument is C.
// The plain-text find() calls are a cheap prefilter (skipped when a needle
// is empty); cjson is used for the decision only, never to re-encode, so
// stolen members keep their exact bytes. pushAll() pushes in slices because
// unpack() is limited by the Lua stack size.
const stealLuaLib = `
local function match(raw, W, C, nW, nC)
  if nW ~= '' and not string.find(raw, nW, 1, true) then return false end
  if nC ~= '' and not string.find(raw, nC, 1, true) then return false end
  local ok, j = pcall(cjson.decode, raw)
  if not ok or type(j) ~= 'table' or j['class'] ~= W then return false end
  local a = j['args']
  return type(a) == 'table' and a[1] == C
end
local function pushAll(cmd, key, xs)
  for i = 1, #xs, 1000 do
    redis.call(cmd, key, unpack(xs, i, math.min(i + 999, #xs)))
  end
end
`

// stealListScript pops up to ARGV[5] jobs (never more than the budget
// ARGV[6]) from the right (oldest) end of a queue and partitions them:
// matching jobs go to the steal's private list as envelopes
// "<source key>\n\n<raw>", the others to the hold list in the queue's own
// orientation (restoreHoldScript puts them back in order). Doing the pop and
// the move in one script means exactly one steal can own a job.
// KEYS[1] queue, KEYS[2] hold list, KEYS[3] private list
// ARGV[1] worker class, ARGV[2] first arg, ARGV[3] worker needle,
// ARGV[4] first-arg needle, ARGV[5] chunk, ARGV[6] budget, ARGV[7] envelope prefix
// Returns {popped, stolen}.
var stealListScript = redis.NewScript(stealLuaLib + `
local take = math.min(tonumber(ARGV[5]), tonumber(ARGV[6]))
if take <= 0 then return {0, 0} end
local jobs = redis.call('RPOP', KEYS[1], take)
if not jobs then return {0, 0} end
local keep, mine = {}, {}
for _, raw in ipairs(jobs) do
  if match(raw, ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then
    mine[#mine+1] = ARGV[7] .. raw
  else
    keep[#keep+1] = raw
  end
end
pushAll('LPUSH', KEYS[2], keep)
pushAll('RPUSH', KEYS[3], mine)
return {#jobs, #mine}
`)

// restoreHoldScript moves up to ARGV[1] jobs from the left (newest) end of
// a hold list to the right (oldest, next to be fetched) end of their queue,
// so the queue ends up in its original order with jobs pushed meanwhile
// still behind them. Returns how many remain in the hold list.
// KEYS[1] hold list, KEYS[2] queue, KEYS[3] "queues"; ARGV[2] queue name.
var restoreHoldScript = redis.NewScript(`
local n = tonumber(ARGV[1])
local xs = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #xs == 0 then return 0 end
for i = 1, #xs, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(xs, i, math.min(i + 999, #xs)))
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[1], #xs, -1)
return redis.call('LLEN', KEYS[1])
`)

// stealZsetScript walks a sorted set (schedule, retry, dead) by score
// from the cursor (ARGV[1] score, ARGV[2] members kept at that score, which
// are skipped) and moves each matching member it removed itself (ZREM
// returned 1) into the private list as "<source key>\n<score>\n<raw>", in
// score order.
// KEYS[1] zset, KEYS[2] private list
// ARGV[1] score, ARGV[2] kept at that score, ARGV[3] count, ARGV[4] worker
// class, ARGV[5] first arg, ARGV[6] worker needle, ARGV[7] first-arg
// needle, ARGV[8] source key
// Returns {next score, kept at it, stolen, members seen}.
var stealZsetScript = redis.NewScript(stealLuaLib + `
local items = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', tonumber(ARGV[2]), tonumber(ARGV[3]))
local last, kept = ARGV[1], tonumber(ARGV[2])
local mine = {}
for i = 1, #items, 2 do
  local raw, score = items[i], items[i+1]
  if match(raw, ARGV[4], ARGV[5], ARGV[6], ARGV[7]) and redis.call('ZREM', KEYS[1], raw) == 1 then
    mine[#mine+1] = ARGV[8] .. '\n' .. score .. '\n' .. raw
  elseif score == last then
    kept = kept + 1
  else
    last, kept = score, 1
  end
end
pushAll('RPUSH', KEYS[2], mine)
return {last, kept, #mine, #items / 2}
`)

// stealReturnScript puts one stolen job back where it came from, only if it
// is still in the private list (so two processes returning the jobs of a
// dead steal cannot both write it): LPUSH to its queue (as GitLab's
// re-enqueue does) or ZADD to its sorted set with its original score.
// KEYS[1] private list, KEYS[2] source, KEYS[3] "queues"
// ARGV[1] envelope, ARGV[2] raw job, ARGV[3] score ("" for a queue), ARGV[4] queue name
var stealReturnScript = redis.NewScript(`
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] == '' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('LPUSH', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
return 1
`)

// bmSlotScript takes (ARGV[1] = "acquire"), refreshes ("refresh") or gives
// back ("release") one running slot of a legacy migration class: a member
// in the class's ZSET and in the cluster-wide one, scored with the Redis
// time (ms) at which it lapses. Lapsed members are dropped first, so a
// worker that died frees its slot after the TTL. Redis's clock is used so
// that workers with skewed clocks agree.
// KEYS[1] class running zset, KEYS[2] cluster running zset
// ARGV[2] token, ARGV[3] class|token, ARGV[4] ttl (ms), ARGV[5] per-class
// limit, ARGV[6] cluster limit.
// Returns 1 when done, 0 when the class is at its limit, -1 when the
// cluster is; a refresh whose slot had lapsed takes it again if it can
// and then returns 2.
var bmSlotScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
if ARGV[1] == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if ARGV[1] == 'refresh' and redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
  return 1
end
local res = 1
if ARGV[1] == 'refresh' then res = 2 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return -1 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return res
`)

// durablePushScript pushes jobs that replicas must confirm (Client's
// WaitForReplicas), each only if its marker is absent, and sets the marker
// with it: a push made again after an unconfirmed one finds the marker on a
// master that kept the first push (even if a worker already took the job),
// and finds neither on a new master that lost it. Every attempt writes the
// marker (refreshing its TTL), so that the WAIT after it waits for this
// attempt's write, and a push waiting long never outlives its marker.
// KEYS[1] queue list or schedule zset, KEYS[2] "queues";
// ARGV[1] queue name ("" for the schedule), ARGV[2] marker prefix,
// ARGV[3] marker TTL (s), then triples: payload digest, score (schedule), payload.
// Returns how many it pushed.
var durablePushScript = redis.NewScript(`
local n = 0
for i = 4, #ARGV, 3 do
  local marker = ARGV[2] .. ARGV[i]
  if redis.call('EXISTS', marker) == 0 then
    if ARGV[1] == '' then
      redis.call('ZADD', KEYS[1], ARGV[i+1], ARGV[i+2])
    else
      redis.call('LPUSH', KEYS[1], ARGV[i+2])
    end
    n = n + 1
  end
  redis.call('SET', marker, '1', 'EX', ARGV[3])
end
if n > 0 and ARGV[1] ~= '' then redis.call('SADD', KEYS[2], ARGV[1]) end
return n
`)
