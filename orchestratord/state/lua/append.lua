-- Append an event to a queued job's log (common.lua append_queued).
-- ARGV: prefix, job, name, data JSON. Returns the event id, or nil.
local id = append_queued(ARGV[2], ARGV[3], ARGV[4])
if id then news({ARGV[2]}) end
return id
