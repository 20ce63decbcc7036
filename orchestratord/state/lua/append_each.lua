-- Append an event to each of several queued jobs' logs (common.lua append_queued) in one call, and
-- say so in one entry of the news stream: housekeeping's queue positions, a `metrics` event for every
-- waiting job whose place moved, once a second (one call a job held a loaded replica's pass up for
-- seconds).
-- ARGV: prefix, then for each event: job, name, data JSON. Returns each event's id in order, or false
-- (nil) for a job no longer queued.
local out, grown = {}, {}
for a = 2, #ARGV, 3 do
  local id = append_queued(ARGV[a], ARGV[a + 1], ARGV[a + 2])
  out[#out + 1] = id or false
  if id then grown[#grown + 1] = ARGV[a] end
end
news(grown)
return out
