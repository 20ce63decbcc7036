-- Append a `token` event with the next contiguous index, for the instance that runs the job only.
-- ARGV: prefix, job, owner, text as a JSON string, text, the token's logprobs as JSON (or "").
-- Returns the event id and the event's data, or nil.
local job, owner = ARGV[2], ARGV[3]
local h = K('job:' .. job)
local state, claim, n = unpack(redis.call('HMGET', h, 'state', 'claim', 'tokens_out'))
if not state or terminal(state) or claim ~= owner then return nil end
local i = tonumber(n or '0')
redis.call('HSET', h, 'tokens_out', i + 1)
redis.call('APPEND', K('text:' .. job), ARGV[5])
ensure_started(job)
local data = '{"t":' .. ARGV[4] .. ',"i":' .. i
if ARGV[6] ~= '' then data = data .. ',"logprobs":' .. ARGV[6] end
data = data .. '}'
return {redis.call('XADD', K('log:' .. job), '*', 'n', 'token', 'd', data), data}
