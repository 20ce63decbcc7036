-- Lease one slot of a replica: never more than `limit` live leases on it. Expired leases (their holder
-- stopped renewing them) no longer count, so no slot stays leased forever; those on this replica are
-- released here (reap.lua releases the others), and the replica is named in `lz:keys` for reap.lua.
-- With `owner` (and the rest), a granted lease also starts the job there, as start.lua does: its run
-- needs no call of its own.
-- ARGV: prefix, job, pool SEP replica, limit, ttl (ms)[, owner, pool, replica, engine]. Returns 1 if
-- granted, else 0; with `owner`, {1, what start_job returned (nil: the job was not started)} if
-- granted.
local job, where, limit, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local z = K('lz:' .. where)
local now = now_ms()
if redis.call('HEXISTS', K('leases'), job) == 1 then return 0 end
if redis.call('ZCOUNT', z, '(' .. now, '+inf') >= limit then return 0 end
release_lapsed(where, now)
redis.call('ZADD', z, now + ttl, job)
redis.call('SADD', K('lz:keys'), where)
redis.call('HSET', K('leases'), job, where)
redis.call('ZADD', K('alive'), 'XX', now + ttl, job)
if ARGV[6] then
  return {1, start_job(job, ARGV[6], ARGV[7], ARGV[8], ARGV[9]) or false}
end
return 1
