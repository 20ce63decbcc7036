-- Move a job to a terminal state and append its terminal event, once.
-- ARGV: prefix, job, state, name, data JSON, now (wall s), retention (ms), owner ('' for anyone),
-- stop_reason, error_code, error_message ('' when absent), the engine's tokens_out ('' when it gave
-- none: the token events are counted). The owner's end (its run ended well) also gives back the job's
-- slot lease. Returns {id, data, the released lease's pool SEP replica or false}, or nil.
local job, owner = ARGV[2], ARGV[8]
if owner ~= '' and redis.call('HGET', K('job:' .. job), 'claim') ~= owner then return nil end
local fields = {stop_reason = ARGV[9], error_code = ARGV[10], error_message = ARGV[11]}
local id = finish_job(job, ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), fields, ARGV[12])
if not id then return nil end
local last = redis.call('XRANGE', K('log:' .. job), id, id)
local released = false
if owner ~= '' then released = release_lease(job) or false end
return {id, last[1][2][4], released}
