-- Append the batches of events that running jobs' instance gave ids to (its local logs,
-- state/redis_local.py), for several jobs in one call: each batch one stream entry under its last
-- event's id (state/redis_tail.py `events_of` reads it back), for that instance only, none once the
-- job has ended or the instance's claim on it is gone. A batch whose last id the log already holds was
-- written by an earlier attempt (its reply was lost with the connection) and is skipped, its text with it.
-- ARGV: prefix, owner, then for each job: job, tokens_out after the batch, the batch's last event id,
-- its records (each event's id, name and data joined by \x1f, the events joined by \x1e) and the text
-- its tokens add.
-- Returns, for each job in order: 1, 0 (the job takes no more events from this instance) or -1 (Redis
-- does not hold the job). The jobs whose logs grew are in one entry of the news stream (common.lua).

local owner = ARGV[2]
local out, grown = {}, {}
for a = 3, #ARGV, 5 do
  local done, grew = append_batch(ARGV[a], owner, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  out[#out + 1] = done
  if grew then grown[#grown + 1] = ARGV[a] end
end
news(grown)
return out
