-- order_expire: the member-slot step of an expiry: an unpaid order past its expiry becomes EXPIRED. Run
-- by the engine's expiry task; fenced against a concurrent pay by the status and expiry checks (exactly
-- one of them wins). The stock lives in each product's slot: the engine releases the holds right after
-- this step (stock_release.lua) and the saga worker does the same from this script's event.
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] reservations zset     fs:{P}:reservations
-- KEYS[3] outbox stream         fs:{P}:outbox (the member's partition)
-- ARGV[1] order id   ARGV[2] event id
-- Due means expires_at_ms <= Redis time, which also stamps closed_at.
-- Returns a status string:
--   'expired'        status EXPIRED (the engine then releases the stock)
--   'not_reserved'   paid, cancelled or expired already (reservation entry dropped)
--   'gone'           no such order (reservation entry dropped)
--   'not_due'        its expiry is still ahead
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

o.status, o.closed_at = 'EXPIRED', rfc3339(now)
-- An order whose items cannot be read fails here, before any write (a script error does not undo the
-- writes before it), rather than sending them on to the sink.
cjson.decode(o.items)
local snapshot = order_snapshot(o)
redis.call('HSET', KEYS[1], 'status', o.status, 'closed_at', o.closed_at)
redis.call('ZREM', KEYS[2], ARGV[1])
outbox(KEYS[3], ARGV[2], 'order.expired', 'order:' .. o.id, o.closed_at, { order = snapshot })
return 'expired'
