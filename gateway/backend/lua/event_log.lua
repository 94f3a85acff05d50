-- One publishing process's dashboard summaries since its last flush, in one call (all keys in
-- the {g} slot): the recent-events log and the per-minute counters. At most one call per
-- process per interval (gateway/backend/event_log.py), instead of two writes per publish.
-- KEYS[1] the recent-events log: a sorted set, all scores 0, members ordered by their
--         "<publish time in µs, 16 digits><seq, 8 hex>" prefix (newest last), then the JSON [id, room, type, source]
-- KEYS[2] this flush's mark: a flush retried (a timeout, a reconnect) is applied once
-- KEYS[3..] per-minute counter hashes (type -> count), as the publish script wrote them
-- ARGV[1] entries the log keeps   ARGV[2] mark TTL (s)   ARGV[3] n, the number of log members
-- ARGV[4 .. 3+n] the members; then for each counter hash: the number of its types, then
--         type, count pairs
-- Returns 1, or 0 when this flush was applied before.
if not redis.call("SET", KEYS[2], "1", "NX", "EX", ARGV[2]) then
  return 0
end
local n = tonumber(ARGV[3])
local i = 4
if n > 0 then
  while i <= 3 + n do
    local args = {"ZADD", KEYS[1]}
    local last = math.min(3 + n, i + 499)
    for j = i, last do
      args[#args + 1] = "0"
      args[#args + 1] = ARGV[j]
    end
    redis.call(unpack(args))
    i = last + 1
  end
  redis.call("ZREMRANGEBYRANK", KEYS[1], 0, -tonumber(ARGV[1]) - 1)
end
for k = 3, #KEYS do
  local types = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, types do
    local count = tonumber(ARGV[i + 1])
    if redis.call("HINCRBY", KEYS[k], ARGV[i], count) == count then
      redis.call("EXPIRE", KEYS[k], 7200)  -- once per type and minute, as before
    end
    i = i + 2
  end
end
return 1
