-- Remove memberships of a dead node, only if it is still dead at this moment (single Redis).
-- A node whose lease is back (it re-registered during a long sweep) keeps everything; each
-- membership counts once, by what SREM removed, so two sweeps at once never count twice.
-- KEYS[1] node lease                 KEYS[2] node memberships set
-- KEYS[3] room -> member count hash  KEYS[4] rooms index zset (scores 0)
-- KEYS[4 + i] the presence hash of the room of ARGV[i]
-- ARGV[i] a membership "room\31connectionId"
-- Returns {-1, 0} when the node is alive, else {memberships removed, presence entries removed}.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return {-1, 0}
end
local removed, presence = 0, 0
for i = 1, #ARGV do
  if redis.call("SREM", KEYS[2], ARGV[i]) == 1 then
    removed = removed + 1
    local sep = string.find(ARGV[i], "\31", 1, true)
    local room = string.sub(ARGV[i], 1, sep - 1)
    presence = presence + redis.call("HDEL", KEYS[4 + i], string.sub(ARGV[i], sep + 1))
    if redis.call("HINCRBY", KEYS[3], room, -1) <= 0 then
      redis.call("HDEL", KEYS[3], room)
      redis.call("ZREM", KEYS[4], room)
    end
  end
end
return {removed, presence}
