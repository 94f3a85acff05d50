-- Join or leave rooms for one connection, keeping the room counts and the room index exact.
-- Single Redis only: the keys span slots (Redis Cluster runs the same steps as separate calls).
-- A membership counts once: the node's memberships set is the truth (SADD/SREM answer whether
-- it changed), so a repeated join or leave, or a janitor racing a leave, never counts twice.
-- KEYS[1] node memberships set       KEYS[2] client info hash
-- KEYS[3] room -> member count hash  KEYS[4] rooms index zset (scores 0)
-- KEYS[5] nodes index zset (a node that writes memberships is in it, so the janitor finds it)
-- KEYS[6..] the presence hash of each room, in the order of ARGV[8..]
-- ARGV[1] 1 = join, -1 = leave       ARGV[2] connection id
-- ARGV[3] presence value             ARGV[4] client info JSON ("" = delete the client's entry)
-- ARGV[5] node                       ARGV[6] now (epoch ms), the node's score if it is new;
--                                    "" once the node is known to be indexed (no {g} write)
-- ARGV[7] one flag per room: "1" keeps a presence entry, "0" a count only (broadcast rooms)
-- ARGV[8..] rooms
-- Returns the number of memberships that changed.
local delta = tonumber(ARGV[1])
local conn = ARGV[2]
local changed_total = 0
if delta > 0 and ARGV[6] ~= "" then
  redis.call("ZADD", KEYS[5], "NX", ARGV[6], ARGV[5])
end
for i = 8, #ARGV do
  local room = ARGV[i]
  local member = room .. "\31" .. conn
  local presence = KEYS[i - 2]
  local changed
  if delta > 0 then
    changed = redis.call("SADD", KEYS[1], member)
    if string.sub(ARGV[7], i - 7, i - 7) == "1" then
      redis.call("HSET", presence, conn, ARGV[3])
    end
  else
    changed = redis.call("SREM", KEYS[1], member)
    -- also for broadcast rooms: entries an earlier release wrote there
    redis.call("HDEL", presence, conn)
  end
  if changed == 1 then
    changed_total = changed_total + 1
    local n = redis.call("HINCRBY", KEYS[3], room, delta)
    if n <= 0 then
      redis.call("HDEL", KEYS[3], room)
      redis.call("ZREM", KEYS[4], room)
    elseif n == delta then
      redis.call("ZADD", KEYS[4], 0, room)  -- the room's first member: into the index
    end
  end
end
if ARGV[4] == "" then
  redis.call("HDEL", KEYS[2], conn)
else
  redis.call("HSET", KEYS[2], conn, ARGV[4])
end
return changed_total
