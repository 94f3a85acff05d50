-- Join or leave rooms for one connection, keeping presence and the room index exact.
-- Single Redis only: the keys span slots (Redis Cluster runs the same steps as separate calls).
-- KEYS[1] node memberships set      KEYS[2] client info hash
-- KEYS[3] room -> member count hash  KEYS[4] rooms index zset (scores 0)
-- KEYS[5..] the presence hash of each room, in the order of ARGV[5..]
-- ARGV[1] 1 = join, -1 = leave       ARGV[2] connection id
-- ARGV[3] presence value             ARGV[4] client info JSON ("" = delete the client's entry)
-- ARGV[5..] rooms
-- Returns the number of memberships that changed.
local delta = tonumber(ARGV[1])
local conn = ARGV[2]
local changed_total = 0
for i = 5, #ARGV do
  local room = ARGV[i]
  local member = room .. "\31" .. conn
  local changed
  if delta > 0 then
    changed = redis.call("HSET", KEYS[i], conn, ARGV[3])
    redis.call("SADD", KEYS[1], member)
  else
    changed = redis.call("HDEL", KEYS[i], conn)
    redis.call("SREM", KEYS[1], member)
  end
  if changed == 1 then
    changed_total = changed_total + 1
    local n = redis.call("HINCRBY", KEYS[3], room, delta)
    if n <= 0 then
      redis.call("HDEL", KEYS[3], room)
      redis.call("ZREM", KEYS[4], room)
    else
      redis.call("ZADD", KEYS[4], 0, room)
    end
  end
end
if ARGV[4] == "" then
  redis.call("HDEL", KEYS[2], conn)
else
  redis.call("HSET", KEYS[2], conn, ARGV[4])
end
return changed_total
