-- A user's grace period ended: offline, unless a connection opened meanwhile.
-- KEYS[1] the user's hash (user_online)
-- KEYS[2] the presence stream       optional: single Redis only
-- KEYS[3] the user's due zset (its shard's, or the legacy one)  optional: single Redis only
-- KEYS[4] the user's online index shard                       optional: single Redis only
-- ARGV[1] user id   ARGV[2] now (ms)   ARGV[3] stream MAXLEN   ARGV[4] TTL of an offline user (s)
-- ARGV[5] the due score the caller read (the zset entry is removed only if not newer)
-- Returns {status, role, ts}: status 0 = not due yet, 1 = went offline (the caller appends to the
-- stream when KEYS[2] was not given), 2 = nothing to announce.
local off = redis.call("HGET", KEYS[1], "off")
local total = 0
local flat = redis.call("HGETALL", KEYS[1])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == "n:" then
    total = total + tonumber(flat[i + 1])
  end
end
local status, role, ts = 2, "", "0"
if total > 0 or not off then
  status = 2
elseif tonumber(off) > tonumber(ARGV[2]) then
  status = 0
else
  redis.call("HDEL", KEYS[1], "off")
  if redis.call("HGET", KEYS[1], "on") == "1" then
    status = 1
    role = redis.call("HGET", KEYS[1], "role") or ""
    ts = redis.call("HGET", KEYS[1], "seen") or ARGV[2]
    redis.call("HSET", KEYS[1], "on", "0", "ix", "0")
    if #KEYS >= 2 then
      redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[3], "*",
                 "userId", ARGV[1], "role", role, "online", "0", "ts", ts)
    end
    if #KEYS >= 4 then
      redis.call("ZREM", KEYS[4], ARGV[1])
    end
  end
  redis.call("EXPIRE", KEYS[1], ARGV[4])
end
if #KEYS >= 3 and status ~= 0 then
  local score = redis.call("ZSCORE", KEYS[3], ARGV[1])
  if score and tonumber(score) <= tonumber(ARGV[5]) then
    redis.call("ZREM", KEYS[3], ARGV[1])
  end
end
return {status, role, ts}
