-- coupon_quantity_add (admin): releases more of a first-come coupon: total_quantity and remaining go
-- up by the same count, so issued + remaining = total_quantity still holds.
-- KEYS[1] coupon hash           fs:{P}:coupon:ID
-- KEYS[2] coupon ops zset       fs:{P}:coupon:ID:ops (recent op ids: a resent call adds nothing)
-- KEYS[3] outbox stream         fs:{P}:outbox (the coupon's partition)
-- ARGV[1] coupons to add (> 0)   ARGV[2] total quantity limit   ARGV[3] now (ms)   ARGV[4] now (RFC 3339)
-- ARGV[5] event id (op id)
-- ARGV[6] invalidation channel: 'coupon:ID' is published there, so every engine drops its sold-out
--         marker (src/sold_out.rs). A channel, not a key.
-- Returns (prelude protocol):
--   ok 200 coupon                      added (or this very call resent: nothing added twice)
--   err 404 NOT_FOUND                  no such coupon
--   err 422 VALIDATION_FAILED          total_quantity would pass the limit
-- Event: coupon.quantity_added {coupon_id, add, total_quantity_after, remaining_after}
local function view()
  local c = hgetall(KEYS[1])
  return {
    id = tonumber(c.id), name = c.name, discount_type = c.discount_type, discount_value = tonumber(c.discount_value),
    total_quantity = tonumber(c.total_quantity), remaining = tonumber(c.remaining), valid_from = c.valid_from,
    valid_until = c.valid_until,
  }
end
local c = redis.call('HMGET', KEYS[1], 'id', 'total_quantity')
if not c[1] then
  return fail(404, 'NOT_FOUND', 'coupon not found')
end
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  return ok(200, view())
end
local total = tonumber(c[2]) + tonumber(ARGV[1])
if total > tonumber(ARGV[2]) then
  return fail(422, 'VALIDATION_FAILED', 'add: total_quantity may not exceed ' .. ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'total_quantity', ARGV[1])
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(tonumber(ARGV[3]) - 3600000))
outbox(KEYS[3], ARGV[5], 'coupon.quantity_added', 'coupon:' .. c[1], ARGV[4], {
  coupon_id = tonumber(c[1]), add = tonumber(ARGV[1]), total_quantity_after = total, remaining_after = remaining,
})
redis.call('PUBLISH', ARGV[6], 'coupon:' .. c[1])
return ok(200, view())
