-- Move a job to a terminal state and append its terminal event, once.
-- ARGV: prefix, job, state, name, data JSON, retention (ms), owner ('' for anyone),
-- stop_reason, error_code, error_message ('' when absent), the engine's tokens_out ('' when it gave
-- none: the token events are counted), then, for a run that ends here with events not yet written,
-- its last batch: tokens_out after it, its last event id, its records and its text (as append_events
-- takes them), written first, so that the run's last tokens and its end cost one call. The owner's
-- end (its run ended well) also gives back the job's slot lease.
-- Returns {id, data, the released lease's pool SEP replica, the batch's answer (common.lua
-- `append_batch`: 1, 0 or -1; false without a batch)}; id, data and lease are false when the job
-- was not ended here.
local job, owner = ARGV[2], ARGV[7]
local wrote, grew = false, false
if ARGV[12] then wrote, grew = append_batch(job, owner, ARGV[12], ARGV[13], ARGV[14], ARGV[15]) end
local id, data = nil, nil
if owner == '' or redis.call('HGET', K('job:' .. job), 'claim') == owner then
  local fields = {stop_reason = ARGV[8], error_code = ARGV[9], error_message = ARGV[10]}
  id, data = finish_job(job, ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), fields, ARGV[11])
end
if not id then
  if grew then news({job}) end  -- (an end written here tells of the batch in its own news)
  return {false, false, false, wrote}
end
local released = false
if owner ~= '' then released = release_lease(job) or false end
return {id, data, released, wrote}
