-- End or re-run the jobs whose owner stopped renewing its claim (the orchestrator replica died or
-- lost Redis): their slot leases are released; a job that sent no token yet is queued again (once);
-- any other ends with a retriable WORKER_RESET error. Then drop every expired lease.
-- ARGV: prefix, retention (ms), policy JSON, error message.
-- Returns a flat list: job, action ('requeued' | 'reset' | 'gone'), engine ('' if none), ...
local retention = tonumber(ARGV[2])
local policy = cjson.decode(ARGV[3])
local out = {}
for _, job in ipairs(redis.call('ZRANGEBYSCORE', K('alive'), '-inf', now_ms(), 'LIMIT', 0, 100)) do
  redis.call('ZREM', K('alive'), job)
  release_lease(job)
  local h = K('job:' .. job)
  local state, tokens, requeued, pool, engine =
    unpack(redis.call('HMGET', h, 'state', 'tokens_out', 'requeued', 'pool_id', 'engine'))
  local action = 'gone'
  if state and not terminal(state) then
    if tonumber(tokens or '0') == 0 and requeued ~= '1' then
      redis.call('HSET', h, 'requeued', '1')
      requeue(job, h, policy)
      action = 'requeued'
    else
      local data = cjson.encode({code = 'WORKER_RESET', message = ARGV[4], retriable = true,
        retry_after_ms = 1000, pool_id = pool or cjson.null, engine = engine or cjson.null})
      finish_job(job, 'failed', 'error', data, retention, {error_code = 'WORKER_RESET', error_message = ARGV[4]})
      action = 'reset'
    end
  end
  table.insert(out, job)
  table.insert(out, action)
  table.insert(out, engine or '')
end
-- Leases whose holder stopped renewing them (a release lost with its replica) are dropped too: on each
-- engine replica, from its lapsed leases only (each tick, on every orchestrator replica: a walk of every
-- live lease was thousands of calls a tick with thousands of streams open). A deployment whose leases
-- predate `lz:keys` has them named there first.
local now = now_ms()
if redis.call('EXISTS', K('lz:keys')) == 0 then
  for _, where in ipairs(redis.call('HVALS', K('leases'))) do redis.call('SADD', K('lz:keys'), where) end
end
for _, where in ipairs(redis.call('SMEMBERS', K('lz:keys'))) do release_lapsed(where, now, 100) end
return out
