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

local function id_pair(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function append(job, owner, tokens_out, last, records, text)
  local h = K('job:' .. job)
  local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
  if not state then return -1 end
  if terminal(state) or claim ~= owner then return 0 end
  local log = K('log:' .. job)
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #top > 0 then
    local ms, seq = id_pair(last)
    local top_ms, top_seq = id_pair(top[1][1])
    if ms < top_ms or (ms == top_ms and seq <= top_seq) then return 1, false end
  end
  redis.call('XADD', log, last, 'e', records)
  redis.call('HSET', h, 'tokens_out', tokens_out)
  if text ~= '' then redis.call('APPEND', K('text:' .. job), text) end
  return 1, true
end

local owner = ARGV[2]
local out, grown = {}, {}
for a = 3, #ARGV, 5 do
  local done, grew = append(ARGV[a], owner, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  out[#out + 1] = done
  if grew then grown[#grown + 1] = ARGV[a] end
end
news(grown)
return out
