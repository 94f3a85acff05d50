-- Forget a swept node: remove it from the nodes index unless it came back.
-- KEYS[1] nodes index zset
-- KEYS[2..5] (single Redis only) node lease, memberships set, legacy connections set, clients
--            hash: the node is kept while its lease exists or it still holds anything
-- ARGV[1] node   ARGV[2] its score (last heartbeat, ms) when the sweep began: a heartbeat since
--                then changed it, and the node stays
-- Returns 1 when the node was removed, else 0.
if #KEYS > 1 then
  if redis.call("EXISTS", KEYS[2]) == 1 or redis.call("SCARD", KEYS[3]) > 0
      or redis.call("SCARD", KEYS[4]) > 0 or redis.call("HLEN", KEYS[5]) > 0 then
    return 0
  end
end
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call("ZREM", KEYS[1], ARGV[1])
return 1
