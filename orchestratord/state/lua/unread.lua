-- A job to be canceled on disconnect was admitted: unless a reader attaches first, it is due for
-- cancellation after `within` (P unread, read by abandoned.lua on any instance).
-- ARGV: prefix, job, within (ms).
local h = K('job:' .. ARGV[2])
local state, cod, readers, attached =
  unpack(redis.call('HMGET', h, 'state', 'cancel_on_disconnect', 'readers', 'attached'))
if state and cod == '1' and not terminal(state) and tonumber(readers or '0') == 0 and attached ~= '1' then
  redis.call('ZADD', K('unread'), now_ms() + tonumber(ARGV[3]), ARGV[2])
  return 1
end
return 0
