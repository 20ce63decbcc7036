-- Every queued job's place (as position.lua gives one job's), in one walk of the queue: each flow's
-- jobs for a route are projected onto virtual time (the flow's tag plus the cost of the jobs ahead
-- in it over its weight, as core/queue.py computes it), each route's jobs ordered by (tag,
-- deadline, arrival), and each job given its index and the summed tokens of the jobs before it.
-- ARGV: prefix, policy JSON. Returns a flat list: job, position, tokens_in, tokens_out, job, ...
local policy = cjson.decode(ARGV[2])
local by_route = {}
for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
  local tenant, priority, route = split_pair(pair)
  local t0 = tonumber(redis.call('HGET', K('q:tags'), tenant .. SEP .. priority) or '0')
  local w = weight(policy, tenant, priority)
  local spent = 0
  local items = redis.call('ZRANGE', K('q:z:' .. pair), 0, -1, 'WITHSCORES')
  local list = by_route[route]
  if not list then list = {} by_route[route] = list end
  for i = 1, #items, 2 do
    local job = string.sub(items[i], 17)
    local entry = cjson.decode(redis.call('HGET', K('q:entries'), job))
    list[#list + 1] = {t0 + spent / w, tonumber(items[i + 1]), items[i], job, entry.tokens_in or 0, entry.tokens_out or 0}
    spent = spent + entry.cost
  end
end
local out = {}
for _, list in pairs(by_route) do
  table.sort(list, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local tokens_in, tokens_out = 0, 0
  for i, x in ipairs(list) do
    out[#out + 1] = x[4]
    out[#out + 1] = i - 1
    out[#out + 1] = tokens_in
    out[#out + 1] = tokens_out
    tokens_in, tokens_out = tokens_in + x[5], tokens_out + x[6]
  end
end
return out
