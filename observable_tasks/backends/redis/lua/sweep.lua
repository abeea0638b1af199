-- SWEEP finished records older than a cutoff (wall seconds), oldest first, at most `count`
-- per call: DEL the hash (it may already have expired through its TTL), ZREM idx and done.
-- KEYS: 1 done, 2 idx. ARGV: P, cutoff, count. Returns the number of ids removed.
local P, cutoff, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'done', '-inf', cutoff, 'LIMIT', 0, count)
for _, id in ipairs(ids) do
  redis.call('DEL', P .. 't:' .. id)
  redis.call('ZREM', P .. 'idx', id)
  redis.call('ZREM', P .. 'done', id)
end
return #ids
