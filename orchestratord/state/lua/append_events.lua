-- Append the events that running jobs' instance gave ids to (its local logs, state/redis_local.py), for
-- several jobs in one call: each job's in order, for that instance only, none once the job has ended or
-- the instance's claim on it is gone. An event whose id the log already holds was written by an earlier
-- attempt of this batch (its reply was lost with the connection) and is skipped, its text with it.
-- ARGV: prefix, owner, then for each job: job, tokens_out after the batch, the number of events, then
-- for each event: its id, name, data JSON and the text it adds ("" but for tokens).
-- Returns, for each job in order: 1, 0 (the job takes no more events from this instance) or -1 (Redis
-- does not hold the job). The jobs whose logs grew are in one entry of the news stream (common.lua).

local function append(job, owner, tokens_out, first, count)
  local h = K('job:' .. job)
  local state, claim = unpack(redis.call('HMGET', h, 'state', 'claim'))
  if not state then return -1 end
  if terminal(state) or claim ~= owner then return 0 end
  local log = K('log:' .. job)
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  local top_ms, top_seq = -1, -1
  if #top > 0 then
    local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
    top_ms, top_seq = tonumber(ms), tonumber(seq)
  end
  local text, grew = {}, false
  local last = first + 4 * (count - 1)
  -- A batch's ids increase (one instance gives them, in order): when its first is past the log's
  -- newest, all are, and none is compared (most batches: only a retried one was partly written).
  local ms, seq = string.match(ARGV[first], '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  local fresh = ms > top_ms or (ms == top_ms and seq > top_seq)
  for a = first, last, 4 do
    local new = fresh
    if not fresh then
      ms, seq = string.match(ARGV[a], '^(%d+)-(%d+)$')
      ms, seq = tonumber(ms), tonumber(seq)
      new = ms > top_ms or (ms == top_ms and seq > top_seq)
      if new then top_ms, top_seq = ms, seq end
    end
    if new then
      redis.call('XADD', log, ARGV[a], 'n', ARGV[a + 1], 'd', ARGV[a + 2])
      grew = true
      if ARGV[a + 3] ~= '' then text[#text + 1] = ARGV[a + 3] end
    end
  end
  redis.call('HSET', h, 'tokens_out', tokens_out)
  if #text > 0 then redis.call('APPEND', K('text:' .. job), table.concat(text)) end
  return 1, grew
end

local owner = ARGV[2]
local out, grown = {}, {}
local a = 3
while a <= #ARGV do
  local count = tonumber(ARGV[a + 2])
  local done, grew = append(ARGV[a], owner, ARGV[a + 1], a + 3, count)
  out[#out + 1] = done
  if grew then grown[#grown + 1] = ARGV[a] end
  a = a + 3 + 4 * count
end
news(grown)
return out
