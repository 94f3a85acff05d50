-- Keep the cluster-wide room index right as members come and go.
-- KEYS[1] hash room -> member count   KEYS[2] zset (scores 0) of rooms with members
-- ARGV[1] delta (+n / -n)             ARGV[2..] rooms
-- Returns the number of rooms that became empty and left the index.
local emptied = 0
for i = 2, #ARGV do
  local n = redis.call("HINCRBY", KEYS[1], ARGV[i], ARGV[1])
  if n <= 0 then
    redis.call("HDEL", KEYS[1], ARGV[i])
    redis.call("ZREM", KEYS[2], ARGV[i])
    emptied = emptied + 1
  elseif n == tonumber(ARGV[1]) then
    redis.call("ZADD", KEYS[2], 0, ARGV[i])  -- it had no members: into the index
  end
end
return emptied
