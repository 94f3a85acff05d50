-- Compare-and-expire / compare-and-delete of a job lease (worker janitor, rollups).
-- KEYS[1] lease key (a string holding the holder's token)
-- ARGV[1] the holder's token   ARGV[2] new TTL in ms: > 0 renews (or lingers), 0 deletes
-- Returns 1 when the lease was ours and was updated, 0 when someone else holds it (or nobody).
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
local ttl_ms = tonumber(ARGV[2])
if ttl_ms > 0 then
  redis.call("PEXPIRE", KEYS[1], ttl_ms)
else
  redis.call("DEL", KEYS[1])
end
return 1
