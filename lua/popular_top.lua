-- popular_top: the products with the most units sold in paid orders over the given days.
-- KEYS[1] union cache zset     fs:popular:{popular}:top:DAYS (kept ARGV[2] ms; none when '0')
-- KEYS[2..] day zsets          fs:popular:{popular}:YYYYMMDD, one per day of the window
-- ARGV[1] limit (1..100)   ARGV[2] cache lifetime (ms)
-- Returns a flat array: product id, units, product id, units, ... most units first.
local limit = tonumber(ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('ZREVRANGE', KEYS[1], 0, limit - 1, 'WITHSCORES')
end
local days = {}
for i = 2, #KEYS do
  days[#days + 1] = KEYS[i]
end
redis.call('ZUNIONSTORE', KEYS[1], #days, unpack(days))
local top = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1, 'WITHSCORES')
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return top
