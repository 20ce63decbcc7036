-- Register a job and enqueue it in one step, or refuse it; nothing is stored when it is refused.
-- ARGV: prefix, entry JSON, capacity, tenant capacity (-1: none), full policy, the client's ticket
-- ('' for none: see core.queue rule 7, held places), the weights JSON {classes, tenants}, whether to
-- wake every replica's dispatcher ('1') or leave the job to the admitting replica's ('0'), how long
-- (ms) a `cancel_on_disconnect` job may wait for its first reader before it is due for cancellation
-- (P unread, read by abandoned.lua), the most jobs for its route that may be ahead of it (-1: any
-- number; admission's `queue.max_wait_s` at the dispatchers' pace, checked here because other
-- replicas admit between a replica's reads of the queue), then the record's field/value pairs (its
-- created_at is stamped here, by Redis's clock).
-- Returns {'admitted', stored entry, evicted entry or false, its place (as position.lua gives it)} or
-- {'rejected', reason} or {'rejected', 'max_wait', the place it would have taken}.

local raw, capacity, tenant_capacity, policy = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local ticket, weights, wake_all, unread_ms = ARGV[6], ARGV[7], ARGV[8] == '1', tonumber(ARGV[9])
local most_ahead = tonumber(ARGV[10])
local e = cjson.decode(raw)

-- The same call again (redis-py sends a command once more when its reply did not come in time, and
-- Redis may have run the first): the job is admitted once. Enqueued twice, its first place would
-- stay in its lane with no job behind it.
if redis.call('EXISTS', K('job:' .. e.job_id)) == 1 then
  local stored = redis.call('HGET', K('q:entries'), e.job_id)
  if not stored then  -- taken (or ended) since: as it was admitted
    stored = string.sub(raw, 1, -2) .. ',"seq":' .. (redis.call('HGET', K('job:' .. e.job_id), 'seq') or '0') .. '}'
    return {'admitted', stored, false, {0, 0, 0}}
  end
  return {'admitted', stored, false, place_of(e.job_id, cjson.decode(weights))}
end

local function tenant_of(job)
  return cjson.decode(redis.call('HGET', K('q:entries'), job)).tenant
end

-- The first (or, newest_first, the last) job of a class, of `tenant` when given.
local function edge_of_class(priority, tenant, newest_first)
  local z = K('q:class:' .. priority)
  local start = 0
  while true do
    local ids
    if newest_first then
      ids = redis.call('ZREVRANGE', z, start, start + 99)
    else
      ids = redis.call('ZRANGE', z, start, start + 99)
    end
    if #ids == 0 then return nil end
    for _, id in ipairs(ids) do
      if tenant == nil or tenant_of(id) == tenant then return id end
    end
    start = start + 100
  end
end

-- drop-lru: the oldest batch job, else the oldest job; shed-low-priority: the newest job of a lower class.
local function victim(tenant)
  if policy == 'drop-lru' then
    return edge_of_class('batch', tenant, false) or edge_of_class('interactive', tenant, false)
  end
  if policy == 'shed-low-priority' and e.priority == 'interactive' then
    return edge_of_class('batch', tenant, true)
  end
  return nil
end

local tenant_full = tenant_capacity >= 0
  and tonumber(redis.call('HGET', K('q:tenants'), e.tenant) or '0') >= tenant_capacity
local now = now_ms()
local held, mine, bound = purge_held(now), nil, capacity
if held > 0 and ticket ~= '' then
  local due = redis.call('ZSCORE', K('q:held'), ticket)
  if due and tonumber(due) <= now then  -- on time: its place is kept even if the jobs ahead ran late
    held, mine, bound = 0, ticket, 2 * capacity
  elseif due then  -- early: the places due before this ticket's, and not due yet, are promised
    held, mine = redis.call('ZCOUNT', K('q:held'), '(' .. now, '(' .. due), ticket
  end
end
local evicted = false
if tenant_full or redis.call('HLEN', K('q:entries')) + held >= bound then
  local scope = nil
  if tenant_full then scope = e.tenant end
  local job = victim(scope)
  if not job then
    if tenant_full then return {'rejected', 'tenant_capacity'} end
    return {'rejected', 'capacity'}
  end
  evicted = dequeue(job)
end

local h = K('job:' .. e.job_id)
local cancel_on_disconnect = false
local fields = {}  -- one HSET for the whole record (a call from Lua costs more than the command)
for i = 11, #ARGV, 2 do
  fields[#fields + 1], fields[#fields + 2] = ARGV[i], ARGV[i + 1]
  if ARGV[i] == 'cancel_on_disconnect' then cancel_on_disconnect = ARGV[i + 1] == '1' end
  if ARGV[i] == 'expected_until' then fields[#fields] = num(now + tonumber(ARGV[i + 1])) end  -- given in ms from now
  if ARGV[i] == 'created_at' then fields[#fields] = num(now_s()) end  -- stamped here: common.lua now_s
end
for _, v in ipairs({'entry', raw, 'taken', '0', 'requeued', '0', 'claim', ''}) do fields[#fields + 1] = v end
redis.call('HSET', h, unpack(fields))
local stored = enqueue(raw, nil, e)
local place = {0, 0, 0}  -- alone on its route: nothing ahead, no walk
if tonumber(redis.call('HGET', K('q:keys'), e.route)) > 1 then place = place_of(e.job_id, cjson.decode(weights)) end
-- Too far back to start in time: taken out again, nothing kept. A job that a full queue's policy
-- evicted a job for is admitted as before (the eviction stands; waits grow in a queue with room).
if most_ahead >= 0 and place[1] > most_ahead and not evicted then
  dequeue(e.job_id)
  redis.call('DEL', h)
  return {'rejected', 'max_wait', place}
end
if mine then
  redis.call('ZREM', K('q:held'), mine)
  redis.call('ZREM', K('q:held:exp'), mine)
end
if wake_all then redis.call('PUBLISH', K('wake'), e.job_id) end
if cancel_on_disconnect then redis.call('ZADD', K('unread'), now + unread_ms, e.job_id) end
return {'admitted', stored, evicted, place}
