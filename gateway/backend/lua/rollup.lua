-- Events-per-minute rollup: absolute values recomputed from the per-minute counters, so running
-- it twice (or on two workers at once) never double counts.
-- KEYS[1] series hash (minute -> total)   KEYS[2] per-type hash (type -> total over the window)
-- KEYS[3..] per-minute counter hashes (type -> count), oldest first, one per minute of the window
-- ARGV[1] the window's first minute (epoch minutes; KEYS[3] is this minute)
-- ARGV[2] TTL (s) of the two rollup hashes (they vanish when no worker refreshes them)
-- Returns the window's total.
local first = tonumber(ARGV[1])
local by_type = {}
local total = 0
for i = 3, #KEYS do
  local flat = redis.call("HGETALL", KEYS[i])
  local sum = 0
  for j = 1, #flat, 2 do
    local n = tonumber(flat[j + 1]) or 0
    sum = sum + n
    by_type[flat[j]] = (by_type[flat[j]] or 0) + n
  end
  redis.call("HSET", KEYS[1], first + i - 3, sum)
  total = total + sum
end
for _, field in ipairs(redis.call("HKEYS", KEYS[1])) do
  local minute = tonumber(field)
  if minute == nil or minute < first then
    redis.call("HDEL", KEYS[1], field)
  end
end
redis.call("DEL", KEYS[2])
for type_, n in pairs(by_type) do
  redis.call("HSET", KEYS[2], type_, n)
end
redis.call("EXPIRE", KEYS[1], ARGV[2])
if redis.call("EXISTS", KEYS[2]) == 1 then
  redis.call("EXPIRE", KEYS[2], ARGV[2])
end
return total
