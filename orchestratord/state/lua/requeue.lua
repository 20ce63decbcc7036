-- Give back a job this instance took but could not place (its slot went to another replica first).
-- ARGV: prefix, job, owner, policy JSON. Returns 1, or nil if the job is no longer ours and queued.
local job, owner = ARGV[2], ARGV[3]
local h = K('job:' .. job)
local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
if state ~= 'queued' or claim ~= owner then return nil end
requeue(job, h, cjson.decode(ARGV[4]))
return 1
