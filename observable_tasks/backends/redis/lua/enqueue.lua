-- ENQUEUE a new task. KEYS: 1 stream, 2 task hash, 3 idx, 4 delayed, 5 key record (the last
-- two declared for Cluster routing; KEYS[5] is the task hash again when there is no key).
-- ARGV: P, id, events_maxlen, delay (seconds, '0' = at once), key ('' = none), then
-- field/value pairs of the record (see records.py).
-- Sets status PENDING (and `created` from the server clock when not given), indexes the task
-- and emits a `created` event. With no delay the id is XADDed (`msg` = its entry id); with a
-- delay it waits in the delayed ZSET until now + delay (Redis' clock), `next` = that time.
-- With a key: SET of P..'k:'..key unless an unfinished task holds it (a holder that finished
-- or is gone does not count: its key is taken over).
-- Returns {'queued', entry id}, {'delayed', due}, {'held', holder id}, or false when a task
-- with this id already exists.
local P, id, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
local delay, k = tonumber(ARGV[4]) or 0, ARGV[5]
local key = P .. 't:' .. id
if redis.call('EXISTS', key) == 1 then return false end
if k ~= '' then
  local holder = redis.call('GET', P .. 'k:' .. k)
  if holder and holder ~= id then
    local status = redis.call('HGET', P .. 't:' .. holder, 'status')
    if status and not TERMINAL[status] then return {'held', holder} end
  end
  redis.call('SET', P .. 'k:' .. k, id)
end
local now = now_s()
redis.call('HSET', key, 'created', fmt(now), unpack(ARGV, 6))
redis.call('HSET', key, 'id', id, 'status', 'PENDING', 'attempts', '0')
if k ~= '' then redis.call('HSET', key, 'key', k) end
local created = tonumber(redis.call('HGET', key, 'created')) or now
redis.call('ZADD', P .. 'idx', fmt(created), id)
local out
if delay > 0 then
  local due = now + delay
  queue_later(P, id, due)
  out = {'delayed', fmt(due)}
else
  out = {'queued', queue_now(P, id, nil)}
end
emit(P, maxlen, id, 'created', 'PENDING', now)
return out
