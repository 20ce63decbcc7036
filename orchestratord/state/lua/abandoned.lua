-- Readers and cancel-on-disconnect, deployment-wide. First the readers of every instance whose
-- liveness ran out (P replicas: it stopped renewing, it died) are counted out of their jobs; a job
-- left with none becomes unread, due after the grace. Then the unread jobs whose time ran out are
-- taken out of P unread and returned if they are still to be canceled (not ended, no reader): each is
-- returned once, to one instance, which cancels it.
-- ARGV: prefix, grace (ms). Returns {dead instances...}, {job, attached ('1' | '0'), ...}.
local now, grace = now_ms(), tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', K('replicas'), '-inf', now, 'LIMIT', 0, 100)
for _, owner in ipairs(dead) do
  redis.call('ZREM', K('replicas'), owner)
  local held = redis.call('HGETALL', K('readers:' .. owner))
  for i = 1, #held, 2 do
    local job = held[i]
    local h = K('job:' .. job)
    if redis.call('EXISTS', h) == 1 then
      local n = tonumber(redis.call('HGET', h, 'readers') or '0') - tonumber(held[i + 1])
      if n < 0 then n = 0 end
      redis.call('HSET', h, 'readers', n)
      local state, cod = unpack(redis.call('HMGET', h, 'state', 'cancel_on_disconnect'))
      if n == 0 and cod == '1' and not terminal(state) then
        redis.call('ZADD', K('unread'), now + grace, job)
      end
    end
  end
  redis.call('DEL', K('readers:' .. owner))
end
local due = {}
for _, job in ipairs(redis.call('ZRANGEBYSCORE', K('unread'), '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', K('unread'), job)
  local state, cod, readers, attached =
    unpack(redis.call('HMGET', K('job:' .. job), 'state', 'cancel_on_disconnect', 'readers', 'attached'))
  if state and cod == '1' and not terminal(state) and tonumber(readers or '0') == 0 then
    table.insert(due, job)
    table.insert(due, attached == '1' and '1' or '0')
  end
end
return {dead, due}
