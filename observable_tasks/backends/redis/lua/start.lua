-- START tasks a blocking XREADGROUP (run from Python) delivered to consumer `me`; the same
-- START logic as claim.lua (shared through _prelude.lua).
-- KEYS: 1 stream. ARGV: P, me, max_history, events_maxlen, then id, msg pairs.
-- Returns {started, ended} as claim.lua does.
local P, me = ARGV[1], ARGV[2]
local max_history, maxlen = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_s()
local out, ended = {}, {}
for i = 5, #ARGV, 2 do
  start_one(P, ARGV[i], ARGV[i + 1], me, now, out, ended, max_history, maxlen)
end
return {out, ended}
