-- How many queued jobs for the same route are expected to be taken before this one: each flow's
-- jobs for the key are projected onto virtual time (the flow's tag plus the cost of the jobs ahead
-- in it over its weight, as core/queue.py computes it), and those before this job's (tag, deadline,
-- arrival) are counted, with their work.
-- ARGV: prefix, job, policy JSON. Returns {position, their tokens_in, their tokens_out} (summed), or
-- {-1, 0, 0} if the job is not queued.
local job = ARGV[2]
local policy = cjson.decode(ARGV[3])
local stored = redis.call('HGET', K('q:entries'), job)
if not stored then return {-1, 0, 0} end
local me = cjson.decode(stored)
local mine = member(me.seq, job)

local function walk(pair, visit)
  local tenant, priority = split_pair(pair)
  local t0 = tonumber(redis.call('HGET', K('q:tags'), tenant .. SEP .. priority) or '0')
  local w = weight(policy, tenant, priority)
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

local my_tag, my_deadline = nil, nil
walk(me.tenant .. SEP .. me.priority .. SEP .. me.route, function(t, d, m)
  if m == mine then my_tag, my_deadline = t, d return false end
  return true
end)

local ahead, tokens_in, tokens_out = 0, 0, 0
for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
  local _, _, route = split_pair(pair)
  if route == me.route then
    walk(pair, function(t, d, m, entry)
      if t < my_tag or (t == my_tag and (d < my_deadline or (d == my_deadline and m < mine))) then
        ahead = ahead + 1
        tokens_in = tokens_in + (entry.tokens_in or 0)
        tokens_out = tokens_out + (entry.tokens_out or 0)
        return true
      end
      return false
    end)
  end
end
return {ahead, tokens_in, tokens_out}
