-- How many jobs are queued for each route, from the flows' sorted sets (one ZCARD per flow and
-- route, never a walk of the queue); with a tenant, also the job at the head of each of its flows.
-- ARGV: prefix, tenant ('' for none). Returns a flat list: route, depth, head job ('' if none), ...
local tenant = ARGV[2]
local depths, heads, order = {}, {}, {}
for _, pair in ipairs(redis.call('SMEMBERS', K('q:pairs'))) do
  local owner, _, route = split_pair(pair)
  local z = K('q:z:' .. pair)
  local n = redis.call('ZCARD', z)
  if n > 0 then
    if not depths[route] then depths[route] = 0 order[#order + 1] = route heads[route] = {} end
    depths[route] = depths[route] + n
    if owner == tenant then
      local head = redis.call('ZRANGE', z, 0, 0)[1]
      local list = heads[route]
      list[#list + 1] = string.sub(head, 17)
    end
  end
end
local out = {}
for _, route in ipairs(order) do
  out[#out + 1] = route
  out[#out + 1] = depths[route]
  out[#out + 1] = table.concat(heads[route], SEP)
end
return out
