-- PROMOTE the delayed tasks that are due (score <= Redis' clock now), at most `count`: each
-- still PENDING gets a stream entry (`ready` = its planned time, `next` cleared); anything
-- else (cancelled, finished, gone) is only dropped from the ZSET. Atomic, so any number of
-- workers may run it at once: each due task is queued exactly once.
-- KEYS: 1 delayed, 2 stream. ARGV: P, count.
-- Returns {promoted, now, earliest due left or false}.
local P, count = ARGV[1], tonumber(ARGV[2])
local now = now_s()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'WITHSCORES',
  'LIMIT', 0, count)
local n = 0
for i = 1, #due, 2 do
  local id, at = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], id)
  local key = P .. 't:' .. id
  if redis.call('HGET', key, 'status') == 'PENDING' then
    queue_now(P, id, at)
    redis.call('HDEL', key, 'next')
    n = n + 1
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {n, fmt(now), first[2] or false}
