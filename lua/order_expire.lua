-- order_expire: releases the stock of an unpaid order past its expiry. Run by the engine's expiry
-- task; fenced against a concurrent pay by the status and expiry checks (exactly one of them wins).
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] reservations zset     fs:{P}:reservations
-- KEYS[3] outbox stream         fs:{P}:outbox (the owner's partition)
-- KEYS[4..] product hashes      one per order item, in item order
-- ARGV[1] order id   ARGV[2] event id
-- ARGV[3..] product id per item, as the engine read them
-- Due means expires_at_ms <= Redis time, which also stamps closed_at.
-- Returns a status string:
--   'expired'        stock released, status EXPIRED
--   'not_reserved'   paid, cancelled or expired already (reservation entry dropped)
--   'gone'           no such order (reservation entry dropped)
--   'not_due'        its expiry is still ahead
--   'stale'          the product keys do not match the order's items: read again
-- Event: order.expired
local o = hgetall(KEYS[1])
if not o.id then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
if o.status ~= 'RESERVED' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'not_reserved'
end
local now = now_ms()
if tonumber(o.expires_at_ms) > now then
  return 'not_due'
end
local items = cjson.decode(o.items)
if not items_match(items, 3) or #items ~= #KEYS - 3 then
  return 'stale'
end

for i, item in ipairs(items) do
  redis.call('HINCRBY', KEYS[3 + i], 'stock', int(item.quantity))
end
o.status, o.closed_at = 'EXPIRED', rfc3339(now)
redis.call('HSET', KEYS[1], 'status', o.status, 'closed_at', o.closed_at)
redis.call('ZREM', KEYS[2], ARGV[1])
outbox(KEYS[3], ARGV[2], 'order.expired', 'order:' .. o.id, o.closed_at, { order = order_snapshot(o) })
return 'expired'
