-- order_expire: releases the stock of an unpaid order past its expiry. Run by the engine's expiry
-- task; fenced against a concurrent pay by the status and expiry checks (exactly one of them wins).
-- KEYS[1] order hash            fs:order:{o:ID}
-- KEYS[2] reservations zset     fs:reservations:{reservations}
-- KEYS[3] outbox stream         fs:outbox:{outbox}
-- KEYS[4..] product hashes      one per order item, in item order
-- ARGV[1] order id   ARGV[2] now (ms)   ARGV[3] now (RFC 3339)   ARGV[4] event id
-- ARGV[5..] product id per item, as the engine read them
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
if tonumber(o.expires_at_ms) > tonumber(ARGV[2]) then
  return 'not_due'
end
local items = cjson.decode(o.items)
if not items_match(items, 5) or #items ~= #KEYS - 3 then
  return 'stale'
end

for i, item in ipairs(items) do
  redis.call('HINCRBY', KEYS[3 + i], 'stock', int(item.quantity))
end
o.status, o.closed_at = 'EXPIRED', ARGV[3]
redis.call('HSET', KEYS[1], 'status', o.status, 'closed_at', o.closed_at)
redis.call('ZREM', KEYS[2], ARGV[1])
outbox(KEYS[3], ARGV[4], 'order.expired', 'order:' .. o.id, ARGV[3], { order = order_snapshot(o) })
return 'expired'
