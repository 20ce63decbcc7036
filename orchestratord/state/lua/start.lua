-- queued -> running, or running -> running on another engine replica (a failover before the first
-- token), only for the orchestrator instance that took the job and still holds its claim.
-- ARGV: prefix, job, owner, now (wall seconds), pool, replica, engine. Returns the job's log so far
-- (the instance runs it from there: state/redis_local.py), its record (the hash, flat) and its text,
-- or nil.
local job, owner = ARGV[2], ARGV[3]
local h = K('job:' .. job)
local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
if (state ~= 'queued' and state ~= 'running') or claim ~= owner then return nil end
redis.call('HSET', h, 'state', 'running', 'started_at', ARGV[4], 'pool_id', ARGV[5], 'replica_id', ARGV[6],
  'engine', ARGV[7])
ensure_started(job)
return {redis.call('XRANGE', K('log:' .. job), '-', '+'), redis.call('HGETALL', h),
  redis.call('GET', K('text:' .. job)) or ''}
