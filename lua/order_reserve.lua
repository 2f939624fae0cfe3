-- order_reserve: the member-slot step of an order reserve (src/orders.rs): writes the order once the
-- engine holds every item's stock (stock_hold.lua, one call per product in the product's own slot).
-- It touches the member's slot only; the items come with the unit prices their holds answered.
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] reservations zset     fs:{P}:reservations
-- KEYS[3] idempotency key       fs:{P}:idem:MEMBER:SHA
-- KEYS[4] outbox stream         fs:{P}:outbox (the member's partition)
-- KEYS[5] member hash           fs:{P}:member:ID
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] member id   ARGV[4] order id
-- ARGV[5] reservation TTL (ms)   ARGV[6] event id
-- ARGV[7] hold deadline (ms): the earliest deadline of the order's holds
-- ARGV[8..] per item, in item order: product id, quantity, unit price (three entries each)
-- created_at is Redis time; expires_at = created_at + ARGV[5].
-- Returns (prelude protocol):
--   err 404 NOT_FOUND            member unknown to Redis (stale token): nothing written
--   ok 201 order                 reserved; status RESERVED (or this very call resent: same event id)
--   err 409 CONFLICT             the order id is taken by another order (an id-sequence fault; the
--                                engine logs it and counts flashsale_entity_conflicts_total)
--   err 503 SERVICE_UNAVAILABLE  Redis time is past the hold deadline (the orphan sweep may release
--                                the holds soon): nothing written, not even the record; the engine
--                                releases the holds and the client retries
--   replay / reused              see prelude
-- Event: order.reserved
if not redis.call('HGET', KEYS[5], 'id') then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
local early = idem_begin(KEYS[3], ARGV[1], ARGV[2])
if early then return early end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local taken = hgetall(KEYS[1])
  if taken.create_event == ARGV[6] then
    -- This very call resent (same event id): answer as the first run did.
    return ok(201, order_snapshot(taken))
  end
  return fail(409, 'CONFLICT', 'order id already in use')
end
local now = now_ms()
if now > tonumber(ARGV[7]) then
  return refuse_unstored(503, 'SERVICE_UNAVAILABLE', 'the stock holds lapsed before the order was written; retry')
end

local items, total = {}, 0
for i = 8, #ARGV - 2, 3 do
  local qty, price = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  items[#items + 1] = { product_id = tonumber(ARGV[i]), quantity = qty, unit_price = price }
  total = total + qty * price
end
local expires_ms = now + tonumber(ARGV[5])
local order = {
  id = ARGV[4], member_id = ARGV[3], status = 'RESERVED', items = json(items),
  total_amount = int(total), discount_amount = '0', paid_amount = '0', coupon_id = '',
  expires_at_ms = int(expires_ms), expires_at = rfc3339(expires_ms), created_at = rfc3339(now), paid_at = '',
  closed_at = '', paid_day = '', create_event = ARGV[6],
}
local flat = {}
for k, v in pairs(order) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('ZADD', KEYS[2], order.expires_at_ms, ARGV[4])
-- Encoded once (JSON text), for the event and the reply.
local snapshot = order_snapshot(order)
outbox(KEYS[4], ARGV[6], 'order.reserved', 'order:' .. ARGV[4], order.created_at, { order = snapshot })
return ok(201, snapshot)
