-- Dispatch: among the flows whose tenant may run more and whose queued jobs include one a free slot
-- can serve, take the first job (not reserved for the instance that admitted it: common.lua
-- RESERVED_MS) of the flow with the smallest (tag, deadline, arrival); advance the virtual time and
-- the flow's tag; record the claim of the orchestrator instance that took it.
-- ARGV: prefix, owner, claim ttl (ms), policy JSON {classes, tenants}, servable routes (encoded) (JSON
-- list), allowed tenants (JSON list), tenant concurrency limits (JSON object), the servable routes a
-- batch job may take (JSON list: slots held back for interactive work leave some out).
-- Returns {the stored entry JSON, the job's record (its hash, flat), its text}, or nil.

local owner, ttl = ARGV[2], tonumber(ARGV[3])
local policy = cjson.decode(ARGV[4])
local servable, allowed = {}, {}
for _, k in ipairs(cjson.decode(ARGV[5])) do servable[k] = true end
for _, t in ipairs(cjson.decode(ARGV[6])) do allowed[t] = true end
local limits = cjson.decode(ARGV[7])
local batch_ok = {}
for _, k in ipairs(cjson.decode(ARGV[8])) do batch_ok[k] = true end

local function may_run(tenant)
  if not allowed[tenant] then return false end
  local limit = limits[tenant]
  return limit == nil or tonumber(redis.call('HGET', K('run:tenants'), tenant) or '0') < limit
end

-- A flow's first job this instance may take (not reserved for the instance that admitted it:
-- common.lua RESERVED_MS), looking at most SCAN jobs deep: its member and score, or nil.
local SCAN = 32
local now = now_ms()
local function first_open(pair)
  local z = K('q:z:' .. pair)
  local i = 0
  while i < SCAN do
    local page = redis.call('ZRANGE', z, i, SCAN - 1, 'WITHSCORES')
    if #page == 0 then
      if i == 0 then redis.call('SREM', K('q:pairs'), pair) end
      return nil
    end
    local moved = false
    for k = 1, #page, 2 do
      local job = string.sub(page[k], 17)
      -- A member whose job the queue no longer holds would block its lane for ever (every take
      -- failing on it): it is dropped, and counted in P q:orphans. It must never happen; it was seen
      -- under overload on two and three replicas (bench/results/NOTES.md), most likely from a `create`
      -- sent twice, which create.lua now admits once.
      if redis.call('HEXISTS', K('q:entries'), job) == 0 then
        redis.call('ZREM', z, page[k])
        redis.call('HINCRBY', K('q:orphans'), 'dropped', 1)
        moved = true
        break  -- the ranks behind it moved up: read on from the same rank
      end
      if not reserved_for_other(job, owner, now) then return page[k], page[k + 1] end
      i = i + 1
    end
    if not moved then return nil end  -- every job up to SCAN deep is reserved, or the lane ended
  end
  return nil
end

local best = nil
for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
  local tenant, priority, route = split_pair(pair)
  local open = servable[route]
  if priority == 'batch' then open = batch_ok[route] end
  if open and may_run(tenant) then
    local m, score = first_open(pair)
    if m then
      local flow = tenant .. SEP .. priority
      local tag = tonumber(redis.call('HGET', K('q:tags'), flow) or '0')
      local deadline = tonumber(score)
      if best == nil or tag < best.tag or (tag == best.tag and (deadline < best.deadline
          or (deadline == best.deadline and m < best.member))) then
        best = {tag = tag, deadline = deadline, member = m, flow = flow}
      end
    end
  end
end
if best == nil then return nil end

local job = string.sub(best.member, 17)
local stored, e = dequeue(job)
local vtime = tonumber(redis.call('GET', K('q:vtime')) or '0')
redis.call('SET', K('q:vtime'), num(math.max(vtime, best.tag)))
redis.call('HSET', K('q:tags'), best.flow, num(best.tag + e.cost / weight(policy, e.tenant, e.priority)))
redis.call('HSET', K('job:' .. job), 'claim', owner, 'taken', '1')
expected_elsewhere(K('job:' .. job), job, owner)
redis.call('HINCRBY', K('run:tenants'), e.tenant, 1)
redis.call('ZADD', K('alive'), now_ms() + ttl, job)
return {stored, redis.call('HGETALL', K('job:' .. job)), redis.call('GET', K('text:' .. job)) or ''}
