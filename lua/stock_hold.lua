-- stock_hold: the product-slot step of an order reserve (src/orders.rs): holds `qty` units of one
-- product for one order. Idempotent by order id: a second call for the same order (a resend, a retry)
-- answers as the first did and writes nothing.
-- KEYS[1] product hash          fs:{P}:product:ID
-- KEYS[2] product holds hash    fs:{P}:product:ID:holds (order id -> qty|member|unit_price|deadline_ms)
-- KEYS[3] pending holds zset    fs:{P}:holds:pending of the product's partition (member
--                               `product:order:member`, score = deadline_ms; read by the orphan sweep)
-- KEYS[4] bought hash           fs:{P}:product:ID:bought (member id -> units in live orders)
-- ARGV[1] product id   ARGV[2] order id   ARGV[3] member id   ARGV[4] quantity   ARGV[5] hold TTL (ms)
-- deadline_ms = Redis time + ARGV[5]: the order's member step refuses after it, the orphan sweep
-- releases the hold some margin after it when no order was written.
-- Returns an array:
--   { 'held', unit_price, deadline_ms, 1 }  held now by this call
--   { 'held', unit_price, deadline_ms, 0 }  already held for this order (a resend, or an id fault
--                                        whose other call took it): the caller must not release
--                                        what it did not take
--   { 'not_found' }                      no such product; nothing written
--   { 'not_started', starts_ms, ends_ms|-1, now_ms }
--                                        the sale opens at starts_ms (Redis time); nothing written.
--                                        ends_ms and now_ms let the engine cache the window
--   { 'ended', ends_ms, now_ms }         the sale closed at ends_ms; nothing written
--   { 'limit', remaining, limit }        the member's live units + quantity would pass the product's
--                                        per-member limit; remaining = units the member may still
--                                        buy (>= 0); nothing written
--   { 'out_of_stock', stock }            less stock than the quantity; nothing written
--   { 'conflict' }                       the order id already holds this product for another member
--                                        (an id fault); nothing written
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
  local _, member, price, deadline = string.match(held, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if member ~= ARGV[3] then
    return { 'conflict' }
  end
  return { 'held', tonumber(price), tonumber(deadline), 0 }
end
local p = redis.call('HMGET', KEYS[1], 'id', 'price', 'stock', 'sale_starts_ms', 'sale_ends_ms',
  'per_member_limit')
if not p[1] then
  return { 'not_found' }
end
-- The sale window by Redis time: opens at its first millisecond, closes at sale_ends_ms (exclusive).
local now = now_ms()
if p[4] and now < tonumber(p[4]) then
  return { 'not_started', tonumber(p[4]), tonumber(p[5] or -1), now }
end
if p[5] and now >= tonumber(p[5]) then
  return { 'ended', tonumber(p[5]), now }
end
local qty = tonumber(ARGV[4])
if p[6] then
  local limit = tonumber(p[6])
  local bought = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
  if bought + qty > limit then
    return { 'limit', math.max(0, limit - bought), limit }
  end
end
if tonumber(p[3]) < qty then
  return { 'out_of_stock', tonumber(p[3]) }
end
redis.call('HINCRBY', KEYS[1], 'stock', int(-qty))
-- Counted whether or not a limit is set: a limit set during the sale counts what was bought before.
redis.call('HINCRBY', KEYS[4], ARGV[3], int(qty))
local deadline = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], table.concat({ int(qty), ARGV[3], p[2], int(deadline) }, '|'))
redis.call('ZADD', KEYS[3], deadline, ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return { 'held', tonumber(p[2]), deadline, 1 }
