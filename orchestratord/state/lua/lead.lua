-- A short-lived role held by one instance at a time (e.g. publishing queue positions).
-- ARGV: prefix, role, owner, ttl (ms). Returns 1 if `owner` holds it now.
local k = K('lead:' .. ARGV[2])
local holder = redis.call('GET', k)
if holder == false or holder == ARGV[3] then
  redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
