-- Record one accepted receipt of an event in one room (the node checked that this connection was
-- sent the event: gateway/receipts.py). Nothing is recorded once the event's record has expired
-- with the room's history, so receipts never outlive it.
-- KEYS[1] the room's receipts hash of the event (o, e, m written by the publish; c; u:<userId>;
--         n = distinct users, for a broadcast room)
-- KEYS[2] the HyperLogLog of the users who acknowledged (broadcast rooms only)
-- ARGV[1] user id   ARGV[2] ts (ms)   ARGV[3] "1" for a broadcast room (users counted, not listed)
-- Returns 1 when recorded, 0 when the record is gone.
local ttl = redis.call("PTTL", KEYS[1])
if ttl < 0 then
  return 0
end
redis.call("HINCRBY", KEYS[1], "c", 1)
if ARGV[3] == "1" then
  redis.call("PFADD", KEYS[2], ARGV[1])
  redis.call("PEXPIRE", KEYS[2], ttl)
  redis.call("HSET", KEYS[1], "n", redis.call("PFCOUNT", KEYS[2]))
else
  redis.call("HSETNX", KEYS[1], "u:" .. ARGV[1], ARGV[2])
end
return 1
