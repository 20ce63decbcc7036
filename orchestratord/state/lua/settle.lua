-- Correct a flow's tag once a job's real cost is known: tag = max(0, tag + delta).
-- ARGV: prefix, flow, delta.
local tag = tonumber(redis.call('HGET', K('q:tags'), ARGV[2]) or '0')
redis.call('HSET', K('q:tags'), ARGV[2], num(math.max(0, tag + tonumber(ARGV[3]))))
return 1
