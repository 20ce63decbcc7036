-- Count a reader in (+1) or out (-1) of a job that still exists. ARGV: prefix, job, delta.
-- Returns the readers now.
local h = K('job:' .. ARGV[2])
if redis.call('EXISTS', h) == 0 then return 0 end
local delta = tonumber(ARGV[3])
local n = tonumber(redis.call('HGET', h, 'readers') or '0') + delta
if n < 0 then n = 0 end
redis.call('HSET', h, 'readers', n)
if delta > 0 then redis.call('HSET', h, 'attached', '1') end
return n
