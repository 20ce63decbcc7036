-- queued -> running, only for the orchestrator instance that took the job.
-- ARGV: prefix, job, owner, now (wall seconds), pool, replica, engine. Returns 1, or nil.
local job, owner = ARGV[2], ARGV[3]
local h = K('job:' .. job)
local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
if state ~= 'queued' or claim ~= owner then return nil end
redis.call('HSET', h, 'state', 'running', 'started_at', ARGV[4], 'pool_id', ARGV[5], 'replica_id', ARGV[6],
  'engine', ARGV[7])
ensure_started(job)
return 1
