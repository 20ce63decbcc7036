-- Lease one slot of a replica: never more than `limit` live leases on it. Expired leases (their holder
-- stopped renewing them) no longer count, so no slot stays leased forever.
-- ARGV: prefix, job, pool SEP replica, limit, ttl (ms). Returns 1 if granted, else 0.
local job, where, limit, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local z = K('lz:' .. where)
local now = now_ms()
if redis.call('HEXISTS', K('leases'), job) == 1 then return 0 end
if redis.call('ZCOUNT', z, '(' .. now, '+inf') >= limit then return 0 end
redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
redis.call('ZADD', z, now + ttl, job)
redis.call('HSET', K('leases'), job, where)
redis.call('ZADD', K('alive'), 'XX', now + ttl, job)
return 1
