-- Drop a tenant's Idempotency-Key if it still names `job`. ARGV: prefix, tenant SEP key, job.
local k = K('idem:' .. ARGV[2])
local held = redis.call('GET', k)
if held and string.sub(held, 1, #ARGV[3] + 1) == ARGV[3] .. SEP then redis.call('DEL', k) end
return 1
