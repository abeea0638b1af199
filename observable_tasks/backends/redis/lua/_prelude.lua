-- Shared helpers, prepended by scripts.py to every script (one copy of the START and
-- "terminate" logic for claim.lua, start.lua, finish.lua and cancel.lua).
-- Key layout (keep in step with keys.py): P = '<prefix>:{<queue>}:'; P..'stream', P..'t:'..id,
-- P..'idx', P..'done', P..'events', P..'reclaim', P..'w:'..worker, P..'workers',
-- P..'delayed' (due time -> id), P..'k:'..key (idempotency key -> id), channels P..'cancel',
-- P..'done:'..id and P..'wake'. Per-task keys are built here from P; they share P's hash tag, so they live in
-- the slot of the declared keys (Redis Cluster runs such scripts).
local GROUP = 'workers'
local TERMINAL = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMEOUT = true}

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

local function drop_entry(P, msg)
  if msg then
    redis.call('XACK', P .. 'stream', GROUP, msg)
    redis.call('XDEL', P .. 'stream', msg)
  end
end

local function emit(P, maxlen, id, kind, status, now)
  if maxlen > 0 then
    redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxlen, '*',
      'id', id, 'event', kind, 'status', status, 'at', fmt(now))
  end
end

-- Queue task `id` now: a fresh stream entry (the group is created first if Redis lost it),
-- `msg` points at it; `ready` (when it could start) is set when given.
local function queue_now(P, id, ready)
  local stream = P .. 'stream'
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  end
  local msg = redis.call('XADD', stream, '*', 'id', id)
  redis.call('HSET', P .. 't:' .. id, 'msg', msg)
  if ready then redis.call('HSET', P .. 't:' .. id, 'ready', ready) end
  return msg
end

-- Park task `id` (PENDING, no stream entry) in the delayed ZSET until `due` (wall seconds);
-- PUBLISH the due time on the wake channel when it is the earliest one, so that workers
-- sleeping until a later due time promote it on time.
local function queue_later(P, id, due)
  local d = fmt(due)
  redis.call('HSET', P .. 't:' .. id, 'next', d, 'ready', d)
  redis.call('HDEL', P .. 't:' .. id, 'msg')
  redis.call('ZADD', P .. 'delayed', d, id)
  local first = redis.call('ZRANGE', P .. 'delayed', 0, 0)
  if first[1] == id then redis.call('PUBLISH', P .. 'wake', d) end
end

-- Evict the oldest finished records while more than max_history are kept (0 = no limit).
local function enforce_history(P, max_history)
  if max_history <= 0 then return end
  local n = redis.call('ZCARD', P .. 'done')
  if n <= max_history then return end
  local old = redis.call('ZRANGE', P .. 'done', 0, n - max_history - 1)
  for _, oid in ipairs(old) do
    redis.call('DEL', P .. 't:' .. oid)
    redis.call('ZREM', P .. 'idx', oid)
  end
  redis.call('ZREMRANGEBYRANK', P .. 'done', 0, n - max_history - 1)
end

-- Move a task to a terminal status: fields, finished time, TTL, done ZSET, stream entry
-- removed (XACK+XDEL: the stream never grows), event, PUBLISH done:<id>, history limit.
-- extra: flat list of field, value pairs to set as well (result / error).
-- Also: out of the delayed ZSET (a task waiting to start or to retry never runs), and its
-- idempotency key released (if it still holds it) so that the key may be used again.
local function terminate(P, id, status, now, extra, msg, max_history, maxlen)
  local key = P .. 't:' .. id
  redis.call('HSET', key, 'status', status, 'finished', fmt(now))
  if #extra > 0 then redis.call('HSET', key, unpack(extra)) end
  redis.call('HDEL', key, 'payload', 'cancel', 'msg', 'next')
  redis.call('ZREM', P .. 'delayed', id)
  local k = redis.call('HGET', key, 'key')
  if k and redis.call('GET', P .. 'k:' .. k) == id then redis.call('DEL', P .. 'k:' .. k) end
  local ttl = tonumber(redis.call('HGET', key, 'ttl'))
  if ttl and ttl > 0 then redis.call('PEXPIRE', key, math.ceil(ttl * 1000)) end
  redis.call('ZADD', P .. 'done', fmt(now), id)
  drop_entry(P, msg)
  emit(P, maxlen, id, 'finished', status, now)
  redis.call('PUBLISH', P .. 'done:' .. id, status)
  enforce_history(P, max_history)
end

local function worker_lost_error(runs, last_worker)
  return cjson.encode({
    type = 'WorkerLost', code = 'WORKER_LOST',
    message = 'worker lost: the task was started ' .. (runs - 1) ..
      ' time(s) and no worker finished it (max_attempts reached)',
    details = {attempts = runs - 1, last_worker = last_worker or cjson.null},
  })
end

-- START one delivered entry (id, msg) for worker `me`; appends what the worker needs to `out`,
-- and {id, status} to `ended` when START itself ends the task (cancel flag, attempts used up),
-- so that the caller can count that outcome.
-- Counters: `attempts` counts every start (the fencing token, Task.attempts); `runs` counts the
-- starts of the current retry attempt and is what the redelivery limit `max_attempts` (lost
-- workers) bounds; RETRY resets it and increments `retries` (the policy's attempt number of a
-- start is retries + 1).
local function start_one(P, id, msg, me, now, out, ended, max_history, maxlen)
  local key = P .. 't:' .. id
  local r = redis.call('HMGET', key, 'status', 'cancel', 'max_attempts', 'msg', 'worker')
  local status = r[1]
  if (not status) or TERMINAL[status] or (r[4] and r[4] ~= msg) then
    -- missing, finished, or a stale entry (the record points at another entry): drop it
    drop_entry(P, msg)
    return
  end
  if r[2] == '1' then
    terminate(P, id, 'CANCELLED', now, {}, msg, max_history, maxlen)
    ended[#ended + 1] = {id, 'CANCELLED'}
    return
  end
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  local runs = redis.call('HINCRBY', key, 'runs', 1)
  if runs > 1 then
    redis.call('HINCRBY', P .. 'stats', 'redeliveries', 1)  -- read by the queue metrics
  end
  local max_attempts = tonumber(r[3]) or 1
  if runs > max_attempts then
    terminate(P, id, 'FAILED', now, {'error', worker_lost_error(runs, r[5])}, msg,
      max_history, maxlen)
    ended[#ended + 1] = {id, 'FAILED'}
    return
  end
  redis.call('HSET', key, 'status', 'RUNNING', 'worker', me, 'started', fmt(now))
  redis.call('HDEL', key, 'error', 'next')  -- a retry: the last attempt's error is gone
  emit(P, maxlen, id, 'started', 'RUNNING', now)
  local f = redis.call('HMGET', key, 'func', 'payload', 'timeout', 'headers', 'created', 'name',
    'retry', 'retries', 'key', 'ready')
  out[#out + 1] = {id, attempts, f[1], f[2], f[3], f[4], f[5], f[6], msg, f[7],
    tonumber(f[8]) or 0, f[9], f[10]}
end

-- Fence: the caller still owns the task (status RUNNING, attempts == attempt, worker == me).
local function owned(key, attempt, me)
  local r = redis.call('HMGET', key, 'status', 'attempts', 'worker', 'msg', 'cancel')
  return r[1] == 'RUNNING' and r[2] == attempt and r[3] == me, r
end
