-- A room's position, and the events after a client's position when history covers them.
-- KEYS[1] room meta hash {epoch, offset}
-- KEYS[2] room history stream
-- ARGV[1] epoch to use if the room has none   ARGV[2] meta TTL (s)
-- ARGV[3] since offset (-1 = no recovery)     ARGV[4] since epoch
-- Returns {offset, epoch, recovered (0/1), {id1, fields1, id2, fields2, ...}}.
local epoch = redis.call("HGET", KEYS[1], "epoch")
if not epoch then
  epoch = ARGV[1]
  redis.call("HSET", KEYS[1], "epoch", epoch, "offset", 0)
  redis.call("EXPIRE", KEYS[1], ARGV[2])
  redis.call("DEL", KEYS[2])
end
local offset = tonumber(redis.call("HGET", KEYS[1], "offset"))
local since = tonumber(ARGV[3])
if since < 0 or ARGV[4] ~= epoch or since > offset then
  return {offset, epoch, 0, {}}
end
if since == offset then
  return {offset, epoch, 1, {}}
end
local entries = redis.call("XRANGE", KEYS[2], "0-" .. (since + 1), "+")
if #entries == 0 or entries[1][1] ~= ("0-" .. (since + 1)) then
  return {offset, epoch, 0, {}}
end
local flat = {}
for i, entry in ipairs(entries) do
  flat[#flat + 1] = entry[1]
  flat[#flat + 1] = entry[2][2]
end
return {offset, epoch, 1, flat}
