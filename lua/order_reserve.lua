-- order_reserve: creates an order and reserves every item's stock, or nothing at all.
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] reservations zset     fs:{P}:reservations
-- KEYS[3] idempotency key       fs:{P}:idem:MEMBER:SHA
-- KEYS[4] outbox stream         fs:{P}:outbox (the owner's partition)
-- KEYS[5] member hash           fs:{P}:member:ID
-- KEYS[6..] product hashes      fs:{P}:product:ID, one per distinct item, in item order
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] member id   ARGV[4] order id
-- ARGV[5] reservation TTL (ms)   ARGV[6] event id
-- ARGV[7..] quantity per product key, same order as KEYS[6..]
-- created_at is Redis time; expires_at = created_at + ARGV[5].
-- Returns (prelude protocol):
--   err 404 NOT_FOUND            member unknown to Redis (stale token): nothing written
--   ok 201 order                 reserved; status RESERVED (or this very call resent: same event id)
--   err 409 CONFLICT             the order id is taken by another order (an id-sequence fault; the
--                                engine logs it and counts flashsale_entity_conflicts_total)
--   err 404 NOT_FOUND            an item names an unknown product
--   err 409 OUT_OF_STOCK         some item has too little stock; nothing reserved
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

local items, total, short = {}, 0, {}
for i = 6, #KEYS do
  local p = redis.call('HMGET', KEYS[i], 'id', 'price', 'stock')
  if not p[1] then
    return fail(404, 'NOT_FOUND', 'product not found: ' .. string.match(KEYS[i], ':product:(%d+)$'))
  end
  local qty = tonumber(ARGV[i + 1])
  if tonumber(p[3]) < qty then
    short[#short + 1] = p[1]
  end
  items[#items + 1] = { product_id = tonumber(p[1]), quantity = qty, unit_price = tonumber(p[2]) }
  total = total + qty * tonumber(p[2])
end
if #short > 0 then
  return fail(409, 'OUT_OF_STOCK', 'not enough stock for product ' .. table.concat(short, ', '))
end

for i = 6, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'stock', int(-tonumber(ARGV[i + 1])))
end
local now = now_ms()
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
local snapshot = order_snapshot(order)
outbox(KEYS[4], ARGV[6], 'order.reserved', 'order:' .. ARGV[4], order.created_at, { order = snapshot })
return ok(201, snapshot)
