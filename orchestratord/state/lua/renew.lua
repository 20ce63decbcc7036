-- Heartbeat: this instance lives (P replicas, which keeps its readers counted: abandoned.lua), and the
-- claims and leases of the jobs it runs are extended (never revives an expired one).
-- ARGV: prefix, ttl (ms), owner, job ids...
local until_ms = now_ms() + tonumber(ARGV[2])
redis.call('ZADD', K('replicas'), until_ms, ARGV[3])
for i = 4, #ARGV do
  local job = ARGV[i]
  redis.call('ZADD', K('alive'), 'XX', until_ms, job)
  local where = redis.call('HGET', K('leases'), job)
  if where then redis.call('ZADD', K('lz:' .. where), 'XX', until_ms, job) end
end
return 1
