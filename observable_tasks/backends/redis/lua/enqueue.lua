-- ENQUEUE a new task. KEYS: 1 stream, 2 task hash, 3 idx (declared for Cluster routing).
-- ARGV: P, id, events_maxlen, then field/value pairs of the record (see records.py).
-- Sets status PENDING (and `created` from the server clock when not given), XADDs the id,
-- stores the entry id in `msg`, indexes the task and emits a `created` event.
-- Returns the stream entry id, or false when a task with this id already exists.
local P, id, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = P .. 't:' .. id
if redis.call('EXISTS', key) == 1 then return false end
if redis.call('EXISTS', P .. 'stream') == 0 then
  redis.call('XGROUP', 'CREATE', P .. 'stream', GROUP, '0', 'MKSTREAM')
end
local now = now_s()
redis.call('HSET', key, 'created', fmt(now), unpack(ARGV, 4))
redis.call('HSET', key, 'id', id, 'status', 'PENDING', 'attempts', '0')
local created = tonumber(redis.call('HGET', key, 'created')) or now
local msg = redis.call('XADD', P .. 'stream', '*', 'id', id)
redis.call('HSET', key, 'msg', msg)
redis.call('ZADD', P .. 'idx', fmt(created), id)
emit(P, maxlen, id, 'created', 'PENDING', now)
return msg
