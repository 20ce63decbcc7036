-- Remove every queued job whose deadline is at or before now. ARGV: prefix, now. Returns the entries.
local out = {}
for _, job in ipairs(redis.call('ZRANGEBYSCORE', K('q:deadlines'), '-inf', ARGV[2])) do
  local stored = dequeue(job)
  if stored then table.insert(out, stored) end
end
return out
