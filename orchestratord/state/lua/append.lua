-- Append an event to a queued job's log (a running job's events are its runner's: append_events.lua).
-- A `started` event is only ever the first one (another replica may have written the job's first
-- event already); any other event is preceded by `started`.
-- ARGV: prefix, job, name, data JSON. Returns the event id, or nil.
local job, name = ARGV[2], ARGV[3]
local state = redis.call('HGET', K('job:' .. job), 'state')
if not state or state ~= 'queued' then return nil end
local log = K('log:' .. job)
if name == 'started' then
  if redis.call('XLEN', log) > 0 then return nil end
else
  ensure_started(job)
end
local id = redis.call('XADD', log, '*', 'n', name, 'd', ARGV[4])
news({job})
return id
