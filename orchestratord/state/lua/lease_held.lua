-- Live leases on each replica. ARGV: prefix, then pool SEP replica for each. Returns the counts.
local now = now_ms()
local out = {}
for i = 2, #ARGV do table.insert(out, redis.call('ZCOUNT', K('lz:' .. ARGV[i]), '(' .. now, '+inf')) end
return out
