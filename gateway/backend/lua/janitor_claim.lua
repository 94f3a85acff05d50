-- Redis Cluster: take members out of a dead node's set, only if it is still dead at this moment.
-- The caller then removes what the members stand for in other slots; a member is claimed by one
-- sweep only (SREM answers 1 once), so counts derived from the claim are exact.
-- KEYS[1] node lease   KEYS[2] node memberships set, or clients hash (same slot as the lease)
-- ARGV[1..] members (fields of the hash)
-- Returns false (nil) when the node is alive, else the members this call removed.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return false
end
local remove = "SREM"
if redis.call("TYPE", KEYS[2]).ok == "hash" then
  remove = "HDEL"
end
local removed = {}
for i = 1, #ARGV do
  if redis.call(remove, KEYS[2], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
