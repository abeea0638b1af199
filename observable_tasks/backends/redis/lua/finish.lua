-- FINISH a running task, fenced: only if status RUNNING, attempts == attempt and worker == me.
-- KEYS: 1 task hash, 2 stream, 3 done. ARGV: P, id, attempt, me, status, result, error,
-- max_history, events_maxlen ('' result/error = not set).
-- Returns 1, or 0 when refused (the task was reclaimed, cancelled-and-finished, or is unknown).
local P, id, attempt, me, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not TERMINAL[status] then return redis.error_reply('not a terminal status: ' .. status) end
local ok, r = owned(P .. 't:' .. id, attempt, me)
if not ok then return 0 end
local extra = {}
if ARGV[6] ~= '' then extra[#extra + 1] = 'result'; extra[#extra + 1] = ARGV[6] end
if ARGV[7] ~= '' then extra[#extra + 1] = 'error'; extra[#extra + 1] = ARGV[7] end
terminate(P, id, status, now_s(), extra, r[4], tonumber(ARGV[8]), tonumber(ARGV[9]))
return 1
