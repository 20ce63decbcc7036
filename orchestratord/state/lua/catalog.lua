-- The model catalog, shared by every instance: P catalog (hash: model id -> entry JSON) and its
-- version P catalog:v (incremented by every change, so each instance knows when to read it again).
-- ARGV: prefix, op, ... :
--   add <id> <json>      a new entry; 0 if the id exists
--   put <id> <json>      replace an existing entry; 0 if it is gone
--   del <id>             0 if there was none
--   seed <id> <json>...  the entries of a catalog kept before (SQLite), only if Redis never had one
-- Returns 1 if the catalog changed.
local op, cat, v = ARGV[2], K('catalog'), K('catalog:v')
local changed = 0
if op == 'add' then
  changed = redis.call('HSETNX', cat, ARGV[3], ARGV[4])
elseif op == 'put' then
  if redis.call('HEXISTS', cat, ARGV[3]) == 1 then
    redis.call('HSET', cat, ARGV[3], ARGV[4])
    changed = 1
  end
elseif op == 'del' then
  changed = redis.call('HDEL', cat, ARGV[3])
elseif op == 'seed' then
  if redis.call('EXISTS', v) == 1 then return 0 end
  for i = 3, #ARGV, 2 do redis.call('HSET', cat, ARGV[i], ARGV[i + 1]) end
  changed = 1
end
if changed == 1 then redis.call('INCR', v) end
return changed
