-- Count one of this instance's readers in (+1) or out (-1) of a job that still exists. Each
-- instance's readers are counted apart (P readers:<owner>, kept while P replicas says it lives), so
-- that another instance can count out the readers of one that died (abandoned.lua). A reader counted
-- out by then is not counted out twice. When the job's last reader leaves and it is to be canceled
-- on disconnect, it is recorded in P unread, due after the grace (unless grace < 0).
-- ARGV: prefix, job, delta, owner, ttl (ms), grace (ms). Returns the readers now.
local job, delta, owner = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local h = K('job:' .. job)
if redis.call('EXISTS', h) == 0 then return 0 end
local now = now_ms()
if delta > 0 then return count_in(job, owner, tonumber(ARGV[5]), now) end
local mine = K('readers:' .. owner)
if tonumber(redis.call('HGET', mine, job) or '0') <= 0 then
  return tonumber(redis.call('HGET', h, 'readers') or '0')  -- already counted out (this instance was taken for dead)
end
decr(mine, job)
local n = tonumber(redis.call('HGET', h, 'readers') or '0') - 1
if n < 0 then n = 0 end
redis.call('HSET', h, 'readers', n)
local grace = tonumber(ARGV[6])
if n == 0 and grace >= 0 then
  local state, cod = unpack(redis.call('HMGET', h, 'state', 'cancel_on_disconnect'))
  if cod == '1' and not terminal(state) then redis.call('ZADD', K('unread'), now + grace, job) end
end
return n
