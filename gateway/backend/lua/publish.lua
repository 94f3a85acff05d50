-- Atomic publish of one event to one room: offset, history append, TTLs, fan-out.
-- KEYS[1] room meta hash {epoch, offset}
-- KEYS[2] room history stream (entry id 0-<offset>, field d = body)
-- KEYS[3] dedupe key (same slot): the caller's idempotency key, else the event id's key. Always
--         checked when ARGV[7] is "1", so a retried call (redis-py retries after a timeout; a
--         caller retries with the same event id) returns the first result: one event, one offset.
-- ARGV[1] channel           ARGV[2] event body (JSON)       ARGV[3] history size (0 = none)
-- ARGV[4] history TTL (s)    ARGV[5] meta TTL (s)            ARGV[6] epoch to use if the room has none
-- ARGV[7] dedupe flag ("1" or "")                            ARGV[8] dedupe TTL (s)
-- ARGV[9] "PUBLISH" or "SPUBLISH"                            ARGV[10] event id
-- ARGV[11] receipts (optional): the TTL (s) of this event's receipts hash; absent or "" = none
-- ARGV[12] that hash (in the room's slot)
-- The dashboard's summary (recent events, per-minute counts) is not written here: the publishing
-- process batches it (gateway/backend/event_log.py, lua/event_log.lua).
-- Returns {offset, epoch, duplicate (0/1), event id}.
if ARGV[7] == "1" then
  local prev = redis.call("GET", KEYS[3])
  if prev then
    local a = string.find(prev, ":", 1, true)
    local b = string.find(prev, ":", a + 1, true)
    return {tonumber(string.sub(prev, 1, a - 1)), string.sub(prev, a + 1, b - 1), 1,
            string.sub(prev, b + 1)}
  end
end
local epoch = redis.call("HGET", KEYS[1], "epoch")
if not epoch then
  -- the room's history was lost (or never existed): a new epoch, and no stale entries in it
  epoch = ARGV[6]
  redis.call("HSET", KEYS[1], "epoch", epoch, "offset", 0)
  redis.call("DEL", KEYS[2])
end
local offset = redis.call("HINCRBY", KEYS[1], "offset", 1)
redis.call("EXPIRE", KEYS[1], ARGV[5])
if tonumber(ARGV[3]) > 0 then
  redis.call("XADD", KEYS[2], "MAXLEN", ARGV[3], "0-" .. offset, "d", ARGV[2])
  redis.call("EXPIRE", KEYS[2], ARGV[4])
end
redis.call(ARGV[9], ARGV[1], offset .. ":" .. epoch .. ":" .. ARGV[2])
if ARGV[7] == "1" then
  redis.call("SET", KEYS[3], offset .. ":" .. epoch .. ":" .. ARGV[10], "EX", ARGV[8])
end
if ARGV[11] and ARGV[11] ~= "" then
  redis.call("HSET", ARGV[12], "o", offset, "e", epoch)
  redis.call("EXPIRE", ARGV[12], ARGV[11])
end
return {offset, epoch, 0, ARGV[10]}
