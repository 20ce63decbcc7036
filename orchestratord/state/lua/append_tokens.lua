-- Append `token` events (the batch an instance's outbox gathered, state/redis_outbox.py) with the next
-- contiguous indices, for the instance that runs the job only: all of them, or none once the job has
-- ended or the instance's claim is gone.
-- ARGV: prefix, job, owner, then for each token: its text as a JSON string, its text, its logprobs as
-- JSON (or "").
-- Returns how many were appended (0: the job takes no more tokens from this instance).
local job, owner = ARGV[2], ARGV[3]
local h = K('job:' .. job)
local state, claim, n = unpack(redis.call('HMGET', h, 'state', 'claim', 'tokens_out'))
if not state or terminal(state) or claim ~= owner then return 0 end
local i = tonumber(n or '0')
local log, text = K('log:' .. job), {}
ensure_started(job)
for a = 4, #ARGV, 3 do
  local data = '{"t":' .. ARGV[a] .. ',"i":' .. i
  if ARGV[a + 2] ~= '' then data = data .. ',"logprobs":' .. ARGV[a + 2] end
  redis.call('XADD', log, '*', 'n', 'token', 'd', data .. '}')
  text[#text + 1] = ARGV[a + 1]
  i = i + 1
end
redis.call('HSET', h, 'tokens_out', i)
redis.call('APPEND', K('text:' .. job), table.concat(text))
return (#ARGV - 3) / 3
