-- Shared by every script (prepended to each one). ARGV[1] is the key prefix; every key is derived from
-- it inside the script. The prefix carries the deployment's hash tag (`{orchd:}`, redis_client.tagged),
-- so every key a script builds is in one hash slot, and KEYS[1] is one key of that slot (P epoch): a
-- Redis Cluster client sends the script to the node that holds the slot, and Redis refuses a key
-- outside it (CROSSSLOT). So the scripts run on one Redis, a Sentinel primary or a Redis Cluster.
--
-- Keys (P = prefix):
--   P job:<id>        hash    the job record (created_at, started_at and finished_at: wall seconds by
--                             Redis's clock, `now_s`), plus `entry` (its queue entry as JSON), `seq`,
--                             `claim` (the orchestrator instance that took it), `taken`, `requeued`,
--                             `expected_by` (the instance that admitted it to run itself, until taken)
--                             and `expected_until` (ms, Redis clock: till then no other instance takes it)
--   P text:<id>       string  the concatenated token text
--   P log:<id>        stream  the event log: an event as fields n (event name) and d (JSON data), or a
--                             batch of events as field e (append_events.lua)
--   P news            stream  field j: the ids (space-separated) of jobs whose logs one script grew;
--                             capped at about NEWS_KEEP entries (state/redis_tail.py)
--   P q:entries       hash    job -> queue entry JSON (with its seq)
--   P q:class:<prio>  zset    job -> seq, per priority class (arrival order)
--   P q:tenants       hash    tenant -> queued jobs
--   P q:tags, q:sizes hash    flow (tenant SEP priority) -> start tag / queued jobs
--   P q:pairs         set     flow SEP route (encoded), for every non-empty flow-key queue
--   P q:z:<pair>      zset    member seq(16 digits)..job, score = deadline (NO_DEADLINE if none)
--   P q:lanes         hash    pair SEP n|c|i|o -> each q:z:<pair>'s jobs, and the sums of their cost,
--                             tokens_in and tokens_out (kept by enqueue and dequeue, read by place_of)
--   P q:deadlines     zset    job -> deadline
--   P q:keys          hash    route (encoded) -> queued jobs
--   P q:vtime, q:seq  string  the virtual time; the arrival counter
--   P q:held          zset    ticket -> due (ms, Redis clock): places held for refused clients
--   P q:held:exp      zset    ticket -> when its place stops being held (ms)
--   P run:tenants     hash    tenant -> jobs taken and not yet ended
--   P alive           zset    job -> expiry (ms, Redis clock) of its owner's claim, renewed by heartbeat
--   P leases          hash    job -> pool SEP replica;  P lz:<pool SEP replica> zset job -> expiry (ms)
--   P lz:keys         set     every pool SEP replica that has had a lease (each of its lz zsets)
--   P ended           zset    job -> finished_at (wall s, Redis clock: for purge, and for reads of
--                             the jobs that ended since a time)
--   P replicas        zset    instance -> expiry (ms) of its liveness, renewed by its heartbeat
--   P readers:<inst>  hash    job -> that instance's readers (counted out when it stops renewing;
--                             a job's field goes when the job is purged)
--   P unread          zset    job -> when (ms) it is canceled if still unread (cancel_on_disconnect)
--   P catalog         hash    model id -> catalog entry JSON;  P catalog:v  string  its version
--   channels P wake (work may be taken: the job queued or requeued, or FREED and the job that ended),
--   P cancel (job ids) and P elsewhere:<instance> (job ids: `expected_elsewhere`)

local P = ARGV[1]
local SEP = '\31'
local NO_DEADLINE = 1e300
local FREED = 'freed:'  -- a wake-up that only frees a slot or a turn (state/redis_signals.py)

local function K(name) return P .. name end

local function num(x) return string.format('%.17g', x) end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Wall-clock seconds (to the microsecond) by Redis's clock: a job's stamps, whichever replica makes the
-- call, so that its times are one clock's (on replicas with skewed clocks, a job created on one, run
-- on another and canceled through a third still has whole queue and decode times) and each stamp is
-- taken when the change happens here, not when the replica sent its call.
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- Drop the held places whose time ran out; returns how many are still held.
local function purge_held(now)
  local expired = redis.call('ZRANGEBYSCORE', K('q:held:exp'), '-inf', now)
  if #expired > 0 then
    redis.call('ZREM', K('q:held'), unpack(expired))
    redis.call('ZREMRANGEBYSCORE', K('q:held:exp'), '-inf', now)
  end
  return redis.call('ZCARD', K('q:held'))
end

local function terminal(state)
  return state == 'succeeded' or state == 'failed' or state == 'canceled'
end

local function decr(hash, field)
  if redis.call('HINCRBY', hash, field, -1) <= 0 then redis.call('HDEL', hash, field) end
end

local function member(seq, job) return string.format('%016d', seq) .. job end

local function has_deadline(e) return e.deadline ~= nil and e.deadline ~= cjson.null end

local function weight(policy, tenant, priority)
  local t = policy.tenants[tenant] or 1
  local c = policy.classes[priority] or 1
  return t * c
end

local function split_pair(pair)
  local a = string.find(pair, SEP, 1, true)
  local b = string.find(pair, SEP, a + 1, true)
  return string.sub(pair, 1, a - 1), string.sub(pair, a + 1, b - 1), string.sub(pair, b + 1)
end

-- The queue ------------------------------------------------------------------------------------------

-- Count a job into (sign 1) or out of (sign -1) its lane's sums. A lane whose count reaches 0 drops
-- its sums, so one whose jobs were not all counted (queued by a version without the sums, or a member
-- dropped by take.lua) is counted right again once it empties; until then place_of walks it.
local function lane_count(pair, e, sign)
  local h = K('q:lanes')
  local n, c, i, o = pair .. SEP .. 'n', pair .. SEP .. 'c', pair .. SEP .. 'i', pair .. SEP .. 'o'
  if redis.call('HINCRBY', h, n, sign) <= 0 then
    redis.call('HDEL', h, n, c, i, o)
    return
  end
  -- (a zero is not sent: Lua gives -0 as '-0', which HINCRBY refuses)
  for field, v in pairs({[c] = e.cost, [i] = e.tokens_in or 0, [o] = e.tokens_out or 0}) do
    if v ~= 0 then redis.call('HINCRBYFLOAT', h, field, sign * v) end
  end
end

-- `e` is `raw` decoded, when the caller has it already.
local function enqueue(raw, seq, e)
  e = e or cjson.decode(raw)
  if not seq then seq = redis.call('INCR', K('q:seq')) end
  local job = e.job_id
  local stored = string.sub(raw, 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('HSET', K('q:entries'), job, stored)
  redis.call('ZADD', K('q:class:' .. e.priority), seq, job)
  redis.call('HINCRBY', K('q:tenants'), e.tenant, 1)
  local flow = e.tenant .. SEP .. e.priority
  if tonumber(redis.call('HGET', K('q:sizes'), flow) or '0') <= 0 then
    local vtime = tonumber(redis.call('GET', K('q:vtime')) or '0')
    local tag = tonumber(redis.call('HGET', K('q:tags'), flow) or '0')
    redis.call('HSET', K('q:tags'), flow, num(math.max(tag, vtime)))
  end
  redis.call('HINCRBY', K('q:sizes'), flow, 1)
  local pair = flow .. SEP .. e.route
  redis.call('SADD', K('q:pairs'), pair)
  local score = NO_DEADLINE
  if has_deadline(e) then
    score = e.deadline
    redis.call('ZADD', K('q:deadlines'), num(e.deadline), job)
  end
  redis.call('ZADD', K('q:z:' .. pair), num(score), member(seq, job))
  lane_count(pair, e, 1)
  redis.call('HINCRBY', K('q:keys'), e.route, 1)
  redis.call('HSET', K('job:' .. job), 'seq', seq)
  return stored
end

local function dequeue(job)
  local stored = redis.call('HGET', K('q:entries'), job)
  if not stored then return nil, nil end
  local e = cjson.decode(stored)
  redis.call('HDEL', K('q:entries'), job)
  redis.call('ZREM', K('q:class:' .. e.priority), job)
  decr(K('q:tenants'), e.tenant)
  local flow = e.tenant .. SEP .. e.priority
  redis.call('HINCRBY', K('q:sizes'), flow, -1)
  local pair = flow .. SEP .. e.route
  local z = K('q:z:' .. pair)
  redis.call('ZREM', z, member(e.seq, job))
  lane_count(pair, e, -1)
  if redis.call('ZCARD', z) == 0 then redis.call('SREM', K('q:pairs'), pair) end
  redis.call('ZREM', K('q:deadlines'), job)
  decr(K('q:keys'), e.route)
  return stored, e
end

-- How many queued jobs for the same route are expected to be taken before `job`: each flow's jobs for
-- the route are projected onto virtual time (the flow's tag plus the cost of the jobs ahead in it over
-- its weight, as core/queue.py computes it), and those before this job's (tag, deadline, arrival) are
-- counted, with their work. Returns {position, their tokens_in, their tokens_out} (summed), or
-- {-1, 0, 0} if the job is not queued.
--
-- A lane is walked only as far as its jobs come before this one. A lane that comes before it entirely
-- (its last job does), and the job's own lane when the job is its last (a new job without a deadline),
-- are counted from their sums (P q:lanes): a `create` behind a long queue costs O(lanes), not O(jobs).
local function place_of(job, policy)
  local stored = redis.call('HGET', K('q:entries'), job)
  if not stored then return {-1, 0, 0} end
  local me = cjson.decode(stored)
  local mine = member(me.seq, job)
  local my_pair = me.tenant .. SEP .. me.priority .. SEP .. me.route

  local function start_of(pair)  -- the flow's tag and weight
    local tenant, priority = split_pair(pair)
    return tonumber(redis.call('HGET', K('q:tags'), tenant .. SEP .. priority) or '0'), weight(policy, tenant, priority)
  end

  -- {n, cost, tokens_in, tokens_out, last member, its deadline, its entry}, or nil if the lane's sums
  -- do not count every job in it
  local function sums(pair)
    local z = K('q:z:' .. pair)
    local v = redis.call('HMGET', K('q:lanes'), pair .. SEP .. 'n', pair .. SEP .. 'c', pair .. SEP .. 'i', pair .. SEP .. 'o')
    local n = redis.call('ZCARD', z)
    if n == 0 or tonumber(v[1]) ~= n then return nil end
    local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    local entry = cjson.decode(redis.call('HGET', K('q:entries'), string.sub(last[1], 17)))
    return {n, tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0'), last[1], tonumber(last[2]), entry}
  end

  local function walk(pair, visit)
    local t0, w = start_of(pair)
    local spent = 0
    local z = K('q:z:' .. pair)
    local start = 0
    while true do
      local items = redis.call('ZRANGE', z, start, start + 63, 'WITHSCORES')
      if #items == 0 then return end
      for i = 1, #items, 2 do
        local entry = cjson.decode(redis.call('HGET', K('q:entries'), string.sub(items[i], 17)))
        if not visit(t0 + spent / w, tonumber(items[i + 1]), items[i], entry) then return end
        spent = spent + entry.cost
      end
      start = start + 64
    end
  end

  local function before(t, d, m, tag, deadline)
    return t < tag or (t == tag and (d < deadline or (d == deadline and m < mine)))
  end

  local ahead, tokens_in, tokens_out = 0, 0, 0
  local my_tag, my_deadline = nil, nil
  local own = sums(my_pair)
  if own and own[5] == mine then  -- last in its lane: every other job of the lane is ahead
    local t0, w = start_of(my_pair)
    my_tag, my_deadline = t0 + (own[2] - me.cost) / w, own[6]
    ahead, tokens_in, tokens_out = own[1] - 1, own[3] - (me.tokens_in or 0), own[4] - (me.tokens_out or 0)
  else
    own = nil
    walk(my_pair, function(t, d, m)
      if m == mine then my_tag, my_deadline = t, d return false end
      return true
    end)
  end

  for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
    local _, _, route = split_pair(pair)
    if route == me.route and not (own and pair == my_pair) then
      local lane = pair ~= my_pair and sums(pair)
      local all = false
      if lane then
        local t0, w = start_of(pair)
        all = before(t0 + (lane[2] - lane[7].cost) / w, lane[6], lane[5], my_tag, my_deadline)
      end
      if all then
        ahead, tokens_in, tokens_out = ahead + lane[1], tokens_in + lane[3], tokens_out + lane[4]
      else
        walk(pair, function(t, d, m, entry)
          if before(t, d, m, my_tag, my_deadline) then
            ahead = ahead + 1
            tokens_in = tokens_in + (entry.tokens_in or 0)
            tokens_out = tokens_out + (entry.tokens_out or 0)
            return true
          end
          return false
        end)
      end
    end
  end
  return {ahead, tokens_in, tokens_out}
end

-- Put a job that was taken back where it was: same arrival number, its flow's charge refunded.
local function requeue(job, h, policy)
  local raw, seq, tenant, taken = unpack(redis.call('HMGET', h, 'entry', 'seq', 'tenant', 'taken'))
  local e = cjson.decode(raw)
  local flow = e.tenant .. SEP .. e.priority
  local tag = tonumber(redis.call('HGET', K('q:tags'), flow) or '0')
  redis.call('HSET', K('q:tags'), flow, num(math.max(0, tag - e.cost / weight(policy, e.tenant, e.priority))))
  if taken == '1' then decr(K('run:tenants'), tenant) end
  redis.call('HSET', h, 'state', 'queued', 'claim', '', 'taken', '0')
  redis.call('HDEL', h, 'started_at', 'pool_id', 'replica_id', 'engine')
  redis.call('ZREM', K('alive'), job)
  enqueue(raw, tonumber(seq), e)
  redis.call('PUBLISH', K('wake'), job)
end

-- The event log -------------------------------------------------------------------------------------

-- `started` is always a job's first event, whichever replica writes first: any other first event is
-- preceded by one made from the record.
local function ensure_started(job)
  local log = K('log:' .. job)
  if redis.call('XLEN', log) > 0 then return end
  local cid = redis.call('HGET', K('job:' .. job), 'correlation_id')
  local cid_json = 'null'
  if cid and cid ~= '' then cid_json = cjson.encode(cid) end
  local data = '{"job_id":' .. cjson.encode(job) .. ',"queue_position":0,"predicted_start_ms":null,'
    .. '"correlation_id":' .. cid_json .. '}'
  redis.call('XADD', log, '*', 'n', 'started', 'd', data)
end

-- Every script that appends to a log says so here, in the same script: each replica's shared read
-- (state/redis_tail.py) follows this one stream and then reads only the logs that grew. Capped; a
-- replica that falls NEWS_KEEP entries behind reads every log it waits on instead.
local NEWS_KEEP = 10000
local function news(jobs)
  if #jobs > 0 then
    redis.call('XADD', K('news'), 'MAXLEN', '~', NEWS_KEEP, '*', 'j', table.concat(jobs, ' '))
  end
end

-- An event appended to a queued job's log (append.lua, append_each.lua): nil once the job has left the
-- queue (a running job's events are its runner's: append_events.lua). A `started` event is only ever
-- the first one (another replica may have written the job's first event already); any other event is
-- preceded by `started`. The caller says so in the news stream.
local function append_queued(job, name, data)
  local state = redis.call('HGET', K('job:' .. job), 'state')
  if not state or state ~= 'queued' then return nil end
  local log = K('log:' .. job)
  if name == 'started' then
    if redis.call('XLEN', log) > 0 then return nil end
  else
    ensure_started(job)
  end
  return redis.call('XADD', log, '*', 'n', name, 'd', data)
end

-- queued -> running, or running -> running on another engine replica (a failover before the first
-- token), only for the orchestrator instance that took the job and still holds its claim (start.lua,
-- and lease_acquire.lua, which starts the job with its slot). Returns the job's log so far (the
-- instance runs it from there: state/redis_local.py), its record (the hash, flat) and its text, or nil.
local function start_job(job, owner, pool, replica, engine)
  local h = K('job:' .. job)
  local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
  if (state ~= 'queued' and state ~= 'running') or claim ~= owner then return nil end
  redis.call('HSET', h, 'state', 'running', 'started_at', num(now_s()), 'pool_id', pool,
    'replica_id', replica, 'engine', engine)
  ensure_started(job)
  return {redis.call('XRANGE', K('log:' .. job), '-', '+'), redis.call('HGETALL', h),
    redis.call('GET', K('text:' .. job)) or ''}
end

-- A job that an instance admitted to run itself (`expected_by`, set by its create) is taken, by
-- `owner`, or ends ('' : whoever ends it): if not by that instance, the instance hears of it on its own
-- channel, and its readers waiting for a local run read the log from Redis at once.
local function expected_elsewhere(h, job, owner)
  local by = redis.call('HGET', h, 'expected_by')
  if by then
    redis.call('HDEL', h, 'expected_by', 'expected_until')
    if by ~= owner then redis.call('PUBLISH', K('elsewhere:' .. by), job) end
  end
end

-- One of `owner`'s readers counted in to an existing job (readers.lua, open.lua): `owner` lives (for
-- `ttl` ms more at least), the job is no longer due for cancellation as unread. Returns its readers.
local function count_in(job, owner, ttl, now)
  local h = K('job:' .. job)
  redis.call('ZADD', K('replicas'), 'GT', now + ttl, owner)
  redis.call('HINCRBY', K('readers:' .. owner), job, 1)
  redis.call('ZREM', K('unread'), job)
  redis.call('HSET', h, 'attached', '1')
  return redis.call('HINCRBY', h, 'readers', 1)
end

-- Whether `job` is reserved for an instance other than `owner` at `now`: admitted by that instance to
-- run itself, until `expected_until` (state/redis.py RESERVED_MS). take.lua leaves it to that instance.
local function reserved_for_other(job, owner, now)
  local by, till = unpack(redis.call('HMGET', K('job:' .. job), 'expected_by', 'expected_until'))
  return by ~= false and by ~= owner and (tonumber(till) or 0) > now
end

-- Append one batch of a running job's events, given their ids by the instance that runs it (its local
-- log, state/redis_local.py), as one stream entry under its last event's id, for that instance only.
-- Returns 1 and whether the log grew (a batch whose last id the log already holds was written by an
-- earlier attempt whose reply was lost: it is skipped, its text with it), 0 (the job takes no more
-- events from this instance: ended, or its claim is gone) or -1 (Redis does not hold the job).
local function append_batch(job, owner, tokens_out, last, records, text)
  local h = K('job:' .. job)
  local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
  if not state then return -1 end
  local log = K('log:' .. job)
  if terminal(state) or claim ~= owner then
    -- written by the attempt whose reply was lost, and the job ended since (the run's own end with it):
    -- the very batch, not another event that got the same id from another clock
    local found = redis.call('XRANGE', log, last, last)
    if #found > 0 and found[1][2][1] == 'e' and found[1][2][2] == records then return 1, false end
    return 0
  end
  -- an id the log already holds (or one below its top) is refused by XADD itself: one command, not a
  -- read of the top first (a log is never trimmed, so its top is its last entry)
  local added = redis.pcall('XADD', log, last, 'e', records)
  if type(added) == 'table' and added.err then
    if string.find(added.err, 'equal or smaller', 1, true) then return 1, false end
    error(added)  -- any other refusal fails the script, as redis.call would
  end
  redis.call('HSET', h, 'tokens_out', tokens_out)
  if text ~= '' then redis.call('APPEND', K('text:' .. job), text) end
  return 1, true
end

local function release_lease(job)
  local where = redis.call('HGET', K('leases'), job)
  if not where then return nil end
  redis.call('HDEL', K('leases'), job)
  redis.call('ZREM', K('lz:' .. where), job)
  return where
end

-- Release the leases on `where` whose holder stopped renewing them (a release lost with its replica),
-- at most `limit` of them (all without one): a walk of the lapsed leases only, never of the live ones.
local function release_lapsed(where, now, limit)
  local z = K('lz:' .. where)
  local range = limit and {'LIMIT', 0, limit} or {}
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, unpack(range))) do
    if redis.call('HGET', K('leases'), job) == where then release_lease(job) else redis.call('ZREM', z, job) end
  end
end

-- Move a live job to a terminal state and append its terminal event, once. `fields` holds the
-- stop_reason / error_code / error_message to record; `counted`, the engine's tokens_out for an `end`
-- ('' or nil: the token events counted stand). Stamped by Redis's clock (`now_s`). Returns the event id
-- and its data, or nil if already ended.
local function finish_job(job, state, name, data, retention_ms, fields, counted)
  local h = K('job:' .. job)
  local cur, started_at, tokens, taken, tenant =
    unpack(redis.call('HMGET', h, 'state', 'started_at', 'tokens_out', 'taken', 'tenant'))
  if not cur or terminal(cur) then return nil end
  local now = now_s()
  dequeue(job)
  if counted and counted ~= '' then
    tokens = counted
    redis.call('HSET', h, 'tokens_out', counted)
  end
  local payload = data
  if name == 'end' then
    local ms = 0
    if started_at and started_at ~= '' then ms = math.floor((now - tonumber(started_at)) * 1000 + 0.5) end
    if ms < 0 then ms = 0 end
    local body = string.sub(data, 2, -2)
    if body ~= '' then body = body .. ',' end
    payload = '{' .. body .. '"tokens_out":' .. (tokens or '0') .. ',"decode_time_ms":' .. ms
      .. ',"decode_ms":' .. ms .. '}'
  end
  redis.call('HSET', h, 'state', state, 'finished_at', num(now), 'taken', '0')
  for f, v in pairs(fields) do
    if v ~= '' then redis.call('HSET', h, f, v) end
  end
  if taken == '1' then decr(K('run:tenants'), tenant) end
  redis.call('ZREM', K('alive'), job)
  expected_elsewhere(h, job, '')
  ensure_started(job)
  local id = redis.call('XADD', K('log:' .. job), '*', 'n', name, 'd', payload)
  news({job})
  redis.call('ZADD', K('ended'), num(now), job)
  local keep = math.max(retention_ms, 1000)
  for _, k in ipairs({h, K('log:' .. job), K('text:' .. job)}) do redis.call('PEXPIRE', k, keep) end
  -- a slot or a tenant's turn came free: news only to dispatchers with something queued to take, and
  -- marked (FREED) so that each may pass it by when no slot or turn held its last look back
  if redis.call('HLEN', K('q:entries')) > 0 then redis.call('PUBLISH', K('wake'), FREED .. job) end
  return id, payload
end
