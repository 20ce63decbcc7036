-- Heartbeat: extend the claims and leases of the jobs this instance runs (never revives an expired one).
-- ARGV: prefix, ttl (ms), job ids...
local until_ms = now_ms() + tonumber(ARGV[2])
for i = 3, #ARGV do
  local job = ARGV[i]
  redis.call('ZADD', K('alive'), 'XX', until_ms, job)
  local where = redis.call('HGET', K('leases'), job)
  if where then redis.call('ZADD', K('lz:' .. where), 'XX', until_ms, job) end
end
return 1
