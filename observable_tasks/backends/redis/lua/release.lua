-- RELEASE (graceful shutdown): give the worker's running tasks back to the queue without
-- consuming an attempt: status PENDING, attempts - 1 (and runs - 1), a fresh stream entry
-- (the old one is XACK+XDEL'd). Also drops the worker's liveness key and its entry in `workers`.
-- KEYS: 1 stream, 2 w:<me>, 3 workers. ARGV: P, me, events_maxlen, then id, attempt pairs.
-- Returns the number of tasks released (tasks no longer owned are left alone).
local P, me, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stream = P .. 'stream'
local n = 0
local now = now_s()
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local key = P .. 't:' .. id
  local ok, r = owned(key, ARGV[i + 1], me)
  if ok then
    drop_entry(P, r[4])
    local msg = redis.call('XADD', stream, '*', 'id', id)
    redis.call('HINCRBY', key, 'attempts', -1)
    redis.call('HINCRBY', key, 'runs', -1)
    redis.call('HSET', key, 'status', 'PENDING', 'msg', msg)
    redis.call('HDEL', key, 'worker', 'started')
    emit(P, maxlen, id, 'released', 'PENDING', now)
    n = n + 1
  end
end
redis.call('DEL', P .. 'w:' .. me)
redis.call('ZREM', P .. 'workers', me)
return n
