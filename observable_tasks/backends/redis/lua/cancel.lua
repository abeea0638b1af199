-- CANCEL a task. Pending: CANCELLED at once (its entry XACK+XDEL'd, so no worker starts it;
-- START also skips an entry already read; one waiting in the delayed ZSET, to start or to
-- retry, is removed from it by terminate(), so it never runs again). Running: set the
-- `cancel` flag and PUBLISH the id on the cancel channel (the owner cancels it and FINISHes
-- it as CANCELLED; renew/progress report the flag too, should the message be missed).
-- KEYS: 1 task hash. ARGV: P, id, max_history, events_maxlen.
-- Returns 'cancelled', 'running', or 0 (finished or unknown).
local P, id = ARGV[1], ARGV[2]
local key = P .. 't:' .. id
local r = redis.call('HMGET', key, 'status', 'msg')
if r[1] == 'PENDING' then
  terminate(P, id, 'CANCELLED', now_s(), {}, r[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
  return 'cancelled'
end
if r[1] == 'RUNNING' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', P .. 'cancel', id)
  return 'running'
end
return 0
