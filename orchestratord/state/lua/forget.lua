-- Forget an ended job now, before its retention passes (the Responses API's delete): its record, text
-- and log, its place among the ended jobs, and the reader counts that still name it. ARGV: prefix,
-- job. Returns 1, or 0 when the job is not there or has not ended.
local job = ARGV[2]
local state = redis.call('HGET', K('job:' .. job), 'state')
if not state or not terminal(state) then return 0 end
redis.call('DEL', K('job:' .. job), K('log:' .. job), K('text:' .. job))
redis.call('ZREM', K('ended'), job)
for _, owner in ipairs(redis.call('ZRANGE', K('replicas'), 0, -1)) do
  redis.call('HDEL', K('readers:' .. owner), job)
end
return 1
