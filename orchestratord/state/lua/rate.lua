-- A token bucket per tenant on Redis's clock, shared by every replica: `rate` per second, `burst` deep.
-- ARGV: prefix, tenant, rate, burst. Returns the seconds to wait (as a string), "0" when granted.
local h = K('rl:' .. ARGV[2])
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local tokens, last = unpack(redis.call('HMGET', h, 'tokens', 'last'))
tokens = tonumber(tokens) or burst
if last then tokens = math.min(burst, tokens + (now - tonumber(last)) / 1000 * rate) end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', h, 'tokens', num(tokens), 'last', now)
redis.call('PEXPIRE', h, math.ceil(burst / rate * 1000) + 1000)
return num(wait)
