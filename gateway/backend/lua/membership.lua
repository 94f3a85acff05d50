-- Join or leave rooms for one connection, keeping the room counts and the sharded room index exact.
-- Single Redis only: the keys span slots (Redis Cluster runs the same steps as separate calls).
-- A membership counts once: the node's memberships set is the truth (SADD/SREM answer whether
-- it changed), so a repeated join or leave, or a janitor racing a leave, never counts twice.
-- KEYS[1] node memberships set
-- KEYS[2] nodes index zset (a node that writes memberships is in it, so the janitor finds it)
-- KEYS[3i], KEYS[3i+1], KEYS[3i+2] for the i-th room (i = 1..): its presence hash, its index
--         shard's room -> member count hash and its index shard's rooms zset (scores 0)
-- ARGV[1] 1 = join, -1 = leave       ARGV[2] connection id
-- ARGV[3] presence value             ARGV[4] node
-- ARGV[5] now (epoch ms), the node's score if it is new; "" once the node is known to be indexed
-- ARGV[6] one flag per room: "1" keeps a presence entry, "0" a count only (broadcast rooms)
-- ARGV[7..] rooms
-- Returns the number of memberships that changed.
local delta = tonumber(ARGV[1])
local conn = ARGV[2]
local changed_total = 0
if delta > 0 and ARGV[5] ~= "" then
  redis.call("ZADD", KEYS[2], "NX", ARGV[5], ARGV[4])
end
for i = 7, #ARGV do
  local room = ARGV[i]
  local member = room .. "\31" .. conn
  local k = 3 * (i - 6)
  local presence, counts, index = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local changed
  if delta > 0 then
    changed = redis.call("SADD", KEYS[1], member)
    if string.sub(ARGV[6], i - 6, i - 6) == "1" then
      redis.call("HSET", presence, conn, ARGV[3])
    end
  else
    changed = redis.call("SREM", KEYS[1], member)
    if string.sub(ARGV[6], i - 6, i - 6) == "1" then
      redis.call("HDEL", presence, conn)
    end
  end
  if changed == 1 then
    changed_total = changed_total + 1
    local n = redis.call("HINCRBY", counts, room, delta)
    if n <= 0 then
      redis.call("HDEL", counts, room)
      redis.call("ZREM", index, room)
    elseif n == delta then
      redis.call("ZADD", index, 0, room)  -- the room's first member: into the index
    end
  end
end
return changed_total
