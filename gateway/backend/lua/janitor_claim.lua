-- Redis Cluster: take members out of a dead node's set, only if it is still dead at this moment.
-- The caller then removes what the members stand for in other slots; a member is claimed by one
-- sweep only (SREM answers 1 once), so counts derived from the claim are exact.
-- KEYS[1] node lease   KEYS[2] node memberships or connections set (same slot as the lease)
-- ARGV[1..] members
-- Returns false (nil) when the node is alive, else the members this call removed.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return false
end
local removed = {}
for i = 1, #ARGV do
  if redis.call("SREM", KEYS[2], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
