-- Places held for clients refused from a full queue (core.queue, rule 7).
-- ARGV: prefix, ticket ('' to count only), due in ms, held for ms past it.
-- With a ticket: holds the place due then for it (a ticket that holds one keeps its own) and returns
-- the ms until the ticket's place is due. Without: returns how many places are held.
local ticket, due_in, hold = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local held = purge_held(now)
if ticket == '' then return held end
local due = redis.call('ZSCORE', K('q:held'), ticket)
if not due then
  due = now + due_in
  redis.call('ZADD', K('q:held'), due, ticket)
  redis.call('ZADD', K('q:held:exp'), due + hold, ticket)
end
return tostring(tonumber(due) - now)
