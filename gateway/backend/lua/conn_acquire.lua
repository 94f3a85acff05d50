-- Count a connection of a user (or from a client address) cluster-wide, unless the cap is reached.
-- KEYS[1] the counter hash (user_online or ip_connections): "n:<node>" -> that node's connections
-- KEYS[2] the node's held record (node_held)            optional: single Redis only
-- KEYS[3] the presence stream (users only)               optional: single Redis only
-- KEYS[4] the user's online index shard (zset, scores 0) optional: single Redis only
-- ARGV[1] node            ARGV[2] held field ("u:<userId>" / "i:<ip>")   ARGV[3] now (ms)
-- ARGV[4] cap (0 = none)  ARGV[5] count to set for this node ("" = add one; restoring after an
--                         outage sets the node's own count, so repeating it changes nothing)
-- ARGV[6] user id ("" for an address)   ARGV[7] role   ARGV[8] presence stream MAXLEN
-- Returns {admitted 0/1, cluster-wide count after, 1 when the user just came online,
--          1 when the user must be added to the online index (the caller does it without KEYS[4])}.
-- The one HGETALL also gives "on", "off" and "ix": the writes below happen only when they change
-- something, and the node's count goes in the same HSET as role and seen (an online user's next
-- connection: 3 commands, HGETALL, the node record's HINCRBY and one HSET). "ix" = 1 says the
-- user is in the sharded online index (online_settle sets it to 0 with "on"): a user who came
-- online through a node of an earlier release (legacy {g} index) is added by their next
-- connection here.
local field = "n:" .. ARGV[1]
local total, mine = 0, 0
local on, off, ix = nil, nil, nil
local flat = redis.call("HGETALL", KEYS[1])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == "n:" then
    total = total + tonumber(flat[i + 1])
    if flat[i] == field then mine = tonumber(flat[i + 1]) end
  elseif flat[i] == "on" then
    on = flat[i + 1]
  elseif flat[i] == "off" then
    off = flat[i + 1]
  elseif flat[i] == "ix" then
    ix = flat[i + 1]
  end
end
local cap = tonumber(ARGV[4])
local count
if ARGV[5] == "" then
  if cap > 0 and total >= cap then
    return {0, total, 0, 0}
  end
  count = mine + 1
  if #KEYS >= 2 then
    redis.call("HINCRBY", KEYS[2], ARGV[2], 1)
  end
else
  count = tonumber(ARGV[5])
  if #KEYS >= 2 then
    redis.call("HSET", KEYS[2], ARGV[2], count)
  end
end
total = total - mine + count
-- the node's own count is written with the user's other fields: one HSET (this script read
-- "mine" and nothing else runs meanwhile, so setting mine + 1 is the increment)
if ARGV[6] == "" then
  redis.call("HSET", KEYS[1], field, count)
  return {1, total, 0, 0}
end
if off then
  redis.call("HDEL", KEYS[1], "off")
end
if on ~= nil and on ~= "1" then
  -- only an offline user's hash has a TTL (online_settle sets "on" 0 and the TTL together;
  -- within the grace period "off" is set but "on" is still 1 and there is no TTL)
  redis.call("PERSIST", KEYS[1])
end
if on == "1" then
  if ix == "1" then
    redis.call("HSET", KEYS[1], field, count, "role", ARGV[7], "seen", ARGV[3])
    return {1, total, 0, 0}
  end
  redis.call("HSET", KEYS[1], field, count, "role", ARGV[7], "seen", ARGV[3], "ix", "1")
  if #KEYS >= 4 then
    redis.call("ZADD", KEYS[4], 0, ARGV[6])
    return {1, total, 0, 0}
  end
  return {1, total, 0, 1}
end
redis.call("HSET", KEYS[1], field, count, "role", ARGV[7], "seen", ARGV[3], "on", "1", "ix", "1")
if #KEYS >= 3 then
  redis.call("XADD", KEYS[3], "MAXLEN", "~", ARGV[8], "*",
             "userId", ARGV[6], "role", ARGV[7], "online", "1", "ts", ARGV[3])
end
if #KEYS >= 4 then
  redis.call("ZADD", KEYS[4], 0, ARGV[6])
  return {1, total, 1, 0}
end
return {1, total, 1, 1}
