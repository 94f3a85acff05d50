-- disconnect(user): mark when the user was disconnected (it voids the user's cached tokens) and
-- forget what else is cached for them.
-- KEYS[1] string: epoch ms of the user's last disconnect
-- KEYS[2] set: the user's cached token hashes, written by the previous release only (a rolling upgrade)
-- KEYS[3] string: the user's role as Django answered it
-- ARGV[1] epoch ms of this disconnect   ARGV[2] seconds the mark is kept
-- Returns the hashes in that set: the caller deletes their entries (other slots).
local at = ARGV[1]
local before = redis.call("GET", KEYS[1])
if before and tonumber(before) > tonumber(at) then
  at = before -- a later disconnect already marked the user: keep the later time
end
redis.call("SET", KEYS[1], at, "EX", ARGV[2])
local hashes = redis.call("SMEMBERS", KEYS[2])
redis.call("DEL", KEYS[2], KEYS[3])
return hashes
