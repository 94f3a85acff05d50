-- Remove memberships of a dead node, only if it is still dead at this moment (single Redis).
-- A node whose lease is back (it re-registered during a long sweep) keeps everything; each
-- membership counts once, by what SREM removed, so two sweeps at once never count twice.
-- KEYS[1] node lease                 KEYS[2] node memberships set
-- KEYS[3i], KEYS[3i+1], KEYS[3i+2] for ARGV[i]'s room: its presence hash, the room -> member
--         count hash and the rooms index zset that count it (its index shard's; the legacy
--         {g} ones for a node of an earlier release)
-- ARGV[i] a membership "room\31connectionId"
-- Returns {-1, 0} when the node is alive, else {memberships removed, presence entries removed,
-- then the connection id of each membership removed} (the sweep's count of connections).
if redis.call("EXISTS", KEYS[1]) == 1 then
  return {-1, 0}
end
local removed, presence = 0, 0
local conns = {}
for i = 1, #ARGV do
  if redis.call("SREM", KEYS[2], ARGV[i]) == 1 then
    removed = removed + 1
    local sep = string.find(ARGV[i], "\31", 1, true)
    local room = string.sub(ARGV[i], 1, sep - 1)
    local conn = string.sub(ARGV[i], sep + 1)
    conns[#conns + 1] = conn
    local k = 3 * i
    presence = presence + redis.call("HDEL", KEYS[k], conn)
    if redis.call("HINCRBY", KEYS[k + 1], room, -1) <= 0 then
      redis.call("HDEL", KEYS[k + 1], room)
      redis.call("ZREM", KEYS[k + 2], room)
    end
  end
end
return {removed, presence, unpack(conns)}
