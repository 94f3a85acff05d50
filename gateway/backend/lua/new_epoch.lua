-- Move a room to a new epoch because Redis went back in time (it handed out an offset at or
-- below one a node had already seen in that epoch). Compare-and-set on the epoch being left, so
-- nodes that notice at once move the room once. History of the old epoch is dropped: its
-- entries may not be the events clients saw at those offsets. The offset counter keeps going.
-- KEYS[1] room meta hash {epoch, offset}
-- KEYS[2] room history stream
-- ARGV[1] the epoch being left   ARGV[2] the new epoch   ARGV[3] meta TTL (s)
-- ARGV[4] epoch reported for a room with no meta
-- Returns {offset, epoch}: the room's position now.
local epoch = redis.call("HGET", KEYS[1], "epoch")
if not epoch then
  return {0, ARGV[4]}  -- no meta at all: the next publish starts a new epoch by itself
end
if epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call("HSET", KEYS[1], "epoch", epoch)
  redis.call("DEL", KEYS[2])
  redis.call("EXPIRE", KEYS[1], ARGV[3])
end
return {tonumber(redis.call("HGET", KEYS[1], "offset")), epoch}
