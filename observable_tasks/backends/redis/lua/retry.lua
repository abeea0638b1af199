-- RETRY: a running attempt failed and its retry policy plans another one in `wait` seconds;
-- fenced like FINISH (status RUNNING, attempts == attempt, worker == me).
-- The task goes back to PENDING holding no stream entry (XACK+XDEL'd): error = this attempt's
-- error, `retries` + 1, `runs` = 0 (the redelivery limit counts per retry attempt), then it
-- waits in the delayed ZSET until now + wait (or is queued at once for a wait of 0), and a
-- `retrying` event is emitted. A cancel requested meanwhile wins: the task ends CANCELLED.
-- KEYS: 1 task hash, 2 delayed, 3 stream. ARGV: P, id, attempt, me, wait, error,
-- max_history, events_maxlen.
-- Returns {'retrying', due}, {'cancelled'}, or 0 when refused (no longer the caller's).
local P, id, attempt, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wait, maxlen = tonumber(ARGV[5]), tonumber(ARGV[8])
local key = P .. 't:' .. id
local ok, r = owned(key, attempt, me)
if not ok then return 0 end
local now = now_s()
if r[5] == '1' then
  terminate(P, id, 'CANCELLED', now, {}, r[4], tonumber(ARGV[7]), maxlen)
  return {'cancelled'}
end
drop_entry(P, r[4])
redis.call('HSET', key, 'status', 'PENDING', 'error', ARGV[6], 'runs', '0')
redis.call('HINCRBY', key, 'retries', 1)
redis.call('HDEL', key, 'worker', 'msg')
local due = now + wait
if wait > 0 then
  queue_later(P, id, due)
else
  queue_now(P, id, fmt(now))
end
emit(P, maxlen, id, 'retrying', 'PENDING', now)
return {'retrying', fmt(due)}
