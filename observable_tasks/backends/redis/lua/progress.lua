-- PROGRESS of a running task, fenced by (attempt, worker).
-- KEYS: 1 task hash. ARGV: P, id, attempt, me, progress, events_maxlen.
-- Returns 1 when a cancel was requested, 0 otherwise, -1 when the caller no longer owns it.
local P, id, attempt, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 't:' .. id
local ok, r = owned(key, attempt, me)
if not ok then return -1 end
redis.call('HSET', key, 'progress', ARGV[5])
emit(P, tonumber(ARGV[6]), id, 'progress', 'RUNNING', now_s())
if r[5] == '1' then return 1 end
return 0
