-- Remove connections of a dead node, only if it is still dead at this moment (single Redis).
-- KEYS[1] node lease     KEYS[2] node connections set
-- KEYS[3] clients zset   KEYS[4] client info hash
-- KEYS[4 + i] the user connections set of ARGV[i]'s user
-- ARGV[i] a connection id
-- Returns false (nil) when the node is alive, else the connection ids removed.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return false
end
local removed = {}
for i = 1, #ARGV do
  if redis.call("SREM", KEYS[2], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
    redis.call("ZREM", KEYS[3], ARGV[i])
    redis.call("HDEL", KEYS[4], ARGV[i])
    redis.call("SREM", KEYS[4 + i], ARGV[i])
  end
end
return removed
