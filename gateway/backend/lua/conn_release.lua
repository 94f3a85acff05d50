-- Count fewer connections of a user (or from a client address) on one node: a close, or the sweep
-- of a dead node. A user left with no connection goes offline when the grace period ends.
-- KEYS[1] the counter hash (user_online or ip_connections)
-- KEYS[2] the node's held record (node_held)      optional: single Redis only
-- KEYS[3] the presence due zset (users only)      optional: single Redis only
-- ARGV[1] node   ARGV[2] held field   ARGV[3] now (ms)
-- ARGV[4] how many to remove ("" = all of the node's: the sweep of a dead node)
-- ARGV[5] user id ("" for an address)   ARGV[6] grace (ms)
-- Returns {cluster-wide count after, ms when the user goes offline (0 = not now)}.
local field = "n:" .. ARGV[1]
local mine = tonumber(redis.call("HGET", KEYS[1], field) or "0")
local take = mine
if ARGV[4] ~= "" then
  take = math.min(mine, tonumber(ARGV[4]))
end
if take > 0 then
  if mine - take <= 0 then
    redis.call("HDEL", KEYS[1], field)
  else
    redis.call("HINCRBY", KEYS[1], field, -take)
  end
end
if #KEYS >= 2 then
  if ARGV[4] == "" then
    redis.call("HDEL", KEYS[2], ARGV[2])
  elseif redis.call("HINCRBY", KEYS[2], ARGV[2], -tonumber(ARGV[4])) <= 0 then
    redis.call("HDEL", KEYS[2], ARGV[2])
  end
end
local total = 0
local flat = redis.call("HGETALL", KEYS[1])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == "n:" then
    total = total + tonumber(flat[i + 1])
  end
end
if ARGV[5] == "" then
  if total == 0 then
    redis.call("DEL", KEYS[1])
  end
  return {total, 0}
end
if total > 0 or take == 0 then
  return {total, 0}
end
local due = tonumber(ARGV[3]) + tonumber(ARGV[6])
redis.call("HSET", KEYS[1], "seen", ARGV[3], "off", due)
if #KEYS >= 3 then
  redis.call("ZADD", KEYS[3], due, ARGV[5])
end
return {0, due}
