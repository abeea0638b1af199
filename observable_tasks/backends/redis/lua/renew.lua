-- RENEW the leases of the tasks a worker runs, and its liveness key.
-- For each (id, attempt) still owned (fence: RUNNING, attempts == attempt, worker == me) the
-- stream entry's idle time is reset (XCLAIM ... 0 <msg> JUSTID), so no one reclaims it.
-- KEYS: 1 stream, 2 w:<me>, 3 workers. ARGV: P, me, lease_ms, then id, attempt pairs.
-- Returns {lost ids, ids whose cancel was requested}.
local P, me, lease = ARGV[1], ARGV[2], ARGV[3]
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local ok, r = owned(P .. 't:' .. id, ARGV[i + 1], me)
  if ok then
    redis.call('XCLAIM', P .. 'stream', GROUP, me, 0, r[4], 'JUSTID')
    if r[5] == '1' then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
local now = now_s()
redis.call('SET', P .. 'w:' .. me, fmt(now), 'PX', lease)
redis.call('ZADD', P .. 'workers', fmt(now), me)
return {lost, cancel}
