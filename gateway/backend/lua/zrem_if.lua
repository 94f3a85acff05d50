-- Remove a member of a sorted set only if its score is not above a limit (Redis Cluster: the
-- presence due entry of a user whose grace period was handled, unless it was renewed meanwhile).
-- KEYS[1] the sorted set
-- ARGV[1] member   ARGV[2] the highest score to remove
-- Returns 1 when removed.
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call("ZREM", KEYS[1], ARGV[1])
end
return 0
