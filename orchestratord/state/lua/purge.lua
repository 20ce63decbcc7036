-- Forget finished jobs whose retention has passed (their keys also carry a TTL; this keeps the index
-- small and frees them on time). ARGV: prefix, cutoff (wall s). Returns how many.
local jobs = redis.call('ZRANGEBYSCORE', K('ended'), '-inf', ARGV[2], 'LIMIT', 0, 500)
for _, job in ipairs(jobs) do
  redis.call('DEL', K('job:' .. job), K('log:' .. job), K('text:' .. job))
  redis.call('ZREM', K('ended'), job)
end
return #jobs
