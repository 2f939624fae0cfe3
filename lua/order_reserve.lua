-- order_reserve: creates an order and reserves every item's stock, or nothing at all.
-- KEYS[1] order hash            fs:order:{o:ID}
-- KEYS[2] reservations zset     fs:reservations:{reservations}
-- KEYS[3] idempotency key       fs:idem:{m:ID}:SHA
-- KEYS[4] outbox stream         fs:outbox:{outbox}
-- KEYS[5..] product hashes      fs:product:{p:ID}, one per distinct item, in item order
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] member id   ARGV[4] order id
-- ARGV[5] now (RFC 3339)   ARGV[6] expires at (ms)   ARGV[7] expires at (RFC 3339)   ARGV[8] event id
-- ARGV[9..] quantity per product key, same order as KEYS[5..]
-- Returns (prelude protocol):
--   ok 201 order                 reserved; status RESERVED
--   err 404 NOT_FOUND            an item names an unknown product
--   err 409 OUT_OF_STOCK         some item has too little stock; nothing reserved
--   replay / reused              see prelude
-- Event: order.reserved
local early = idem_begin(KEYS[3], ARGV[1], ARGV[2])
if early then return early end
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Order ids are never reused; an existing order means this exact call already ran.
  return ok(201, order_snapshot(hgetall(KEYS[1])))
end

local items, total, short = {}, 0, {}
for i = 5, #KEYS do
  local p = redis.call('HMGET', KEYS[i], 'id', 'price', 'stock')
  if not p[1] then
    return fail(404, 'NOT_FOUND', 'product not found: ' .. string.match(KEYS[i], '{p:(%d+)}'))
  end
  local qty = tonumber(ARGV[i + 4])
  if tonumber(p[3]) < qty then
    short[#short + 1] = p[1]
  end
  items[#items + 1] = { product_id = tonumber(p[1]), quantity = qty, unit_price = tonumber(p[2]) }
  total = total + qty * tonumber(p[2])
end
if #short > 0 then
  return fail(409, 'OUT_OF_STOCK', 'not enough stock for product ' .. table.concat(short, ', '))
end

for i = 5, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'stock', int(-tonumber(ARGV[i + 4])))
end
local order = {
  id = ARGV[4], member_id = ARGV[3], status = 'RESERVED', items = cjson.encode(items),
  total_amount = int(total), discount_amount = '0', paid_amount = '0', coupon_id = '',
  expires_at_ms = ARGV[6], expires_at = ARGV[7], created_at = ARGV[5], paid_at = '', closed_at = '',
  paid_day = '',
}
local flat = {}
for k, v in pairs(order) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
local snapshot = order_snapshot(order)
outbox(KEYS[4], ARGV[8], 'order.reserved', 'order:' .. ARGV[4], ARGV[5], { order = snapshot })
return ok(201, snapshot)
