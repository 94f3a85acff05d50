-- A room's position, and the events after a client's position when history covers them.
-- Reads only: a room nothing was published to has no meta key, and a join creates none.
-- KEYS[1] room meta hash {epoch, offset}
-- KEYS[2] room history stream
-- ARGV[1] epoch reported for a room with no meta (nothing published)
-- ARGV[2] unused (kept for the argument layout)
-- ARGV[3] since offset (-1 = no recovery)     ARGV[4] since epoch
-- Returns {offset, epoch, recovered (0/1), {id1, fields1, id2, fields2, ...}}.
-- A client at offset 0 has seen nothing: history from offset 1 covers it in any epoch.
local epoch = redis.call("HGET", KEYS[1], "epoch")
local offset = 0
if epoch then
  offset = tonumber(redis.call("HGET", KEYS[1], "offset"))
else
  epoch = ARGV[1]
end
local since = tonumber(ARGV[3])
if since < 0 or since > offset or (since > 0 and ARGV[4] ~= epoch) then
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
