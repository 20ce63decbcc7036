-- Remember what a tenant's Idempotency-Key creates, unless it is remembered already.
-- ARGV: prefix, tenant SEP key, job, fingerprint, ttl (ms). Returns nil when stored now, else the first
-- {job, fingerprint}.
local k = K('idem:' .. ARGV[2])
if redis.call('SET', k, ARGV[3] .. SEP .. ARGV[4], 'NX', 'PX', ARGV[5]) then return nil end
local held = redis.call('GET', k)
local at = string.find(held, SEP, 1, true)
return {string.sub(held, 1, at - 1), string.sub(held, at + 1)}
