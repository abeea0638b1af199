-- CLAIM up to n tasks for consumer `me` without blocking: first entries whose holder's lease
-- ran out (XAUTOCLAIM idle > lease_ms: the holder is presumed dead), then new ones
-- (XREADGROUP '>'). Each goes through the START logic in _prelude.lua.
-- XAUTOCLAIM scans at most n*10 pending entries per call, so the scan resumes where the last
-- one stopped (cursor in P..'reclaim'): every pending entry is looked at, round-robin.
-- KEYS: 1 stream, 2 reclaim cursor. ARGV: P, me, lease_ms, n, max_history, events_maxlen.
-- Returns {started, ended}: started = list of
-- {id, attempt, func, payload, timeout, headers, created, name, msg}; ended = list of
-- {id, status} of tasks START ended itself (CANCELLED by flag, FAILED "worker lost").
local P, me, lease, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local max_history, maxlen = tonumber(ARGV[5]), tonumber(ARGV[6])
local stream = P .. 'stream'
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
end
local now = now_s()
local out, ended, got = {}, {}, {}
local cursor = redis.call('GET', P .. 'reclaim') or '0-0'
local reclaimed = redis.call('XAUTOCLAIM', stream, GROUP, me, lease, cursor, 'COUNT', n)
redis.call('SET', P .. 'reclaim', reclaimed[1])
for _, e in ipairs(reclaimed[2]) do
  if e[2] then got[#got + 1] = e end
end
if #got < n then
  local fresh = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', n - #got,
    'STREAMS', stream, '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do got[#got + 1] = e end
  end
end
for _, e in ipairs(got) do
  -- entries hold one field/value pair: 'id', <task id>
  start_one(P, e[2][2], e[1], me, now, out, ended, max_history, maxlen)
end
return {out, ended}
