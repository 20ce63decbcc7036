-- Dispatch: among the flows whose tenant may run more and whose queued jobs include one a free slot
-- can serve, take the head of the flow with the smallest (tag, deadline, arrival); advance the virtual
-- time and the flow's tag; record the claim of the orchestrator instance that took it. A job reserved
-- for the instance that admitted it (state/redis.py RESERVED_MS) is left to it: where its route has slots
-- to spare, this instance takes the first job behind it instead; where it has not, this instance
-- takes nothing while that job is the fair next one (taking another would take its slot), but for a
-- job on another route with slots to spare.
-- Taking several in one call (`count`, with the slots they may use, `budget`) takes each as a call of
-- its own would, one after another: each job taken spends a free slot of a pool serving its route, and
-- a route whose pools have none left (for a batch job: none but those held back) is served no more.
-- ARGV: prefix, owner, claim ttl (ms), policy JSON {classes, tenants}, servable routes (encoded) (JSON
-- list), allowed tenants (JSON list), tenant concurrency limits (JSON object), the servable routes a
-- batch job may take (JSON list: slots held back for interactive work leave some out), the servable
-- routes with slots to spare (JSON list), how many jobs to take at most, and the budget (JSON object:
-- for each servable route, the pools serving it as {pool id, free slots, slots held back}; `{}` with a
-- count of 1).
-- Returns a list of {the stored entry JSON, the job's record (its hash, flat), its text}, in the order
-- taken; empty when none is.

local owner, ttl = ARGV[2], tonumber(ARGV[3])
local policy = cjson.decode(ARGV[4])
local servable, allowed = {}, {}
for _, k in ipairs(cjson.decode(ARGV[5])) do servable[k] = true end
for _, t in ipairs(cjson.decode(ARGV[6])) do allowed[t] = true end
local limits = cjson.decode(ARGV[7])
local batch_ok = {}
for _, k in ipairs(cjson.decode(ARGV[8])) do batch_ok[k] = true end
local roomy = {}
for _, k in ipairs(cjson.decode(ARGV[9])) do roomy[k] = true end
local now = now_ms()

local function may_run(tenant)
  if not allowed[tenant] then return false end
  local limit = limits[tenant]
  return limit == nil or tonumber(redis.call('HGET', K('run:tenants'), tenant) or '0') < limit
end

-- A flow's head: its member and score, or nil when the lane is empty (then it leaves q:pairs).
local function head_of(pair)
  local z = K('q:z:' .. pair)
  local head = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  -- A member whose job the queue no longer holds would block its lane for ever (every take failing
  -- on it): it is dropped, and counted in P q:orphans. It must never happen; it was seen under
  -- overload on two and three replicas (bench/results/NOTES.md), most likely from a `create` sent
  -- twice, which create.lua now admits once.
  while #head > 0 and redis.call('HEXISTS', K('q:entries'), string.sub(head[1], 17)) == 0 do
    redis.call('ZREM', z, head[1])
    redis.call('HINCRBY', K('q:orphans'), 'dropped', 1)
    head = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  end
  if #head == 0 then
    redis.call('SREM', K('q:pairs'), pair)
    return nil
  end
  return head[1], head[2]
end

-- A lane's candidate: its head, unless the head is reserved for another instance and the lane's route
-- has slots to spare; then the first job behind it that is not (at most SCAN deep; a job the queue no
-- longer holds is passed over here and dropped once it is the head). Its member and score, or nil.
local SCAN = 32
local function candidate(pair, spare)
  local m, score = head_of(pair)
  if m == nil or not spare or not reserved_for_other(string.sub(m, 17), owner, now) then return m, score end
  local page = redis.call('ZRANGE', K('q:z:' .. pair), 1, SCAN - 1, 'WITHSCORES')
  for k = 1, #page, 2 do
    local job = string.sub(page[k], 17)
    if redis.call('HEXISTS', K('q:entries'), job) == 1 and not reserved_for_other(job, owner, now) then
      return page[k], page[k + 1]
    end
  end
  return m, score  -- every job in reach is reserved for another: the head, which is not taken here
end

-- The best candidate of the lanes on the routes `fits` admits (smallest tag, deadline, arrival), or nil.
local function pick(fits)
  local best = nil
  for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
    local tenant, priority, route = split_pair(pair)
    local open = servable[route]
    if priority == 'batch' then open = batch_ok[route] end
    if open and fits(route) and may_run(tenant) then
      local m, score = candidate(pair, roomy[route])
      if m then
        local flow = tenant .. SEP .. priority
        local tag = tonumber(redis.call('HGET', K('q:tags'), flow) or '0')
        local deadline = tonumber(score)
        if best == nil or tag < best.tag or (tag == best.tag and (deadline < best.deadline
            or (deadline == best.deadline and m < best.member))) then
          best = {tag = tag, deadline = deadline, member = m, flow = flow, route = route}
        end
      end
    end
  end
  return best
end

-- The next job (its member, flow and route), or nil.
local function next_job()
  local best = pick(function() return true end)
  if best == nil then return nil end
  if reserved_for_other(string.sub(best.member, 17), owner, now) then
    -- The fair next job is reserved for the instance that admitted it: that instance takes it (the
    -- finish that woke this one woke it too), and no job that could take its slot is taken ahead of
    -- it here, so shares stay fair. A job on another route with slots to spare leaves it its slot.
    local held = best.route
    best = pick(function(route) return route ~= held and roomy[route] end)
    if best == nil or reserved_for_other(string.sub(best.member, 17), owner, now) then return nil end
  end
  return best
end

local function take(best)
  local job = string.sub(best.member, 17)
  local stored, e = dequeue(job)
  local vtime = tonumber(redis.call('GET', K('q:vtime')) or '0')
  redis.call('SET', K('q:vtime'), num(math.max(vtime, best.tag)))
  redis.call('HSET', K('q:tags'), best.flow, num(best.tag + e.cost / weight(policy, e.tenant, e.priority)))
  redis.call('HSET', K('job:' .. job), 'claim', owner, 'taken', '1')
  expected_elsewhere(K('job:' .. job), job, owner)
  redis.call('HINCRBY', K('run:tenants'), e.tenant, 1)
  redis.call('ZADD', K('alive'), now + ttl, job)
  return {stored, redis.call('HGETALL', K('job:' .. job)), redis.call('GET', K('text:' .. job)) or ''}, e
end

-- The budget: each pool's free and held-back slots (shared by the routes it serves), each route's pools.
local count = tonumber(ARGV[10] or '1')
local pools, routes = {}, {}
for route, serving in pairs(cjson.decode(ARGV[11] or '{}')) do
  routes[route] = {}
  for _, p in ipairs(serving) do
    pools[p[1]] = pools[p[1]] or {free = tonumber(p[2]), held = tonumber(p[3])}
    table.insert(routes[route], p[1])
  end
end

-- A job of `route` (a batch one when `batch`) took a slot: the serving pool with the most free slots
-- it may use gives one (placement chooses where; a lease that finds the slot gone sends the job back),
-- and every route's openings are counted again as core/capacity.py counts them.
local function spend(route, batch)
  local most = nil
  for _, id in ipairs(routes[route] or {}) do
    local p = pools[id]
    if p.free > (batch and p.held or 0) and (most == nil or p.free > most.free) then most = p end
  end
  if most == nil then return end
  most.free = most.free - 1
  for r, ids in pairs(routes) do
    local any, unheld, sum = false, false, 0
    for _, id in ipairs(ids) do
      local p = pools[id]
      any = any or p.free > 0
      unheld = unheld or p.free > p.held
      sum = sum + p.free
    end
    servable[r], batch_ok[r], roomy[r] = any or nil, unheld or nil, sum >= 2 or nil
  end
end

local out = {}
for _ = 1, count do
  local best = next_job()
  if best == nil then break end
  local got, e = take(best)
  table.insert(out, got)
  spend(best.route, e.priority == 'batch')
end
return out
