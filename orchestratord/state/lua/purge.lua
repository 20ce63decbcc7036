-- Forget finished jobs whose retention has passed (their keys also carry a TTL; this keeps the index
-- small and frees them on time), and the reader counts of live instances that still name them (a
-- reader that read a job to its end is not counted out: api/stream.py). ARGV: prefix, cutoff (wall s).
-- Returns how many.
local jobs = redis.call('ZRANGEBYSCORE', K('ended'), '-inf', ARGV[2], 'LIMIT', 0, 500)
for _, job in ipairs(jobs) do
  redis.call('DEL', K('job:' .. job), K('log:' .. job), K('text:' .. job))
  redis.call('ZREM', K('ended'), job)
end
if #jobs > 0 then
  for _, owner in ipairs(redis.call('ZRANGE', K('replicas'), 0, -1)) do
    redis.call('HDEL', K('readers:' .. owner), unpack(jobs))
  end
end
return #jobs
