-- coupon_create (admin): defines a first-come coupon with a fixed quantity.
-- KEYS[1] coupon hash     fs:{P}:coupon:ID
-- KEYS[2] outbox stream   fs:{P}:outbox (the owner's partition)
-- ARGV[1] coupon id   ARGV[2] name   ARGV[3] discount type FIXED|PERCENT   ARGV[4] discount value
-- ARGV[5] total quantity   ARGV[6] valid from (ms)   ARGV[7] valid from (RFC 3339)
-- ARGV[8] valid until (ms)   ARGV[9] valid until (RFC 3339)   ARGV[10] now (RFC 3339)   ARGV[11] event id
-- Returns (prelude protocol):
--   ok 201 coupon       created, or this very call resent (same event id)
--   err 409 CONFLICT    the id is taken (an id-sequence fault)
-- Event: coupon.created
local function view()
  return {
    id = tonumber(ARGV[1]), name = ARGV[2], discount_type = ARGV[3], discount_value = tonumber(ARGV[4]),
    total_quantity = tonumber(ARGV[5]), remaining = tonumber(ARGV[5]), valid_from = ARGV[7],
    valid_until = ARGV[9],
  }
end
local existing = redis.call('HGET', KEYS[1], 'create_event')
if existing then
  if existing == ARGV[11] then
    return ok(201, view())
  end
  return fail(409, 'CONFLICT', 'coupon id already in use')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[2], 'discount_type', ARGV[3], 'discount_value', ARGV[4],
  'total_quantity', ARGV[5], 'remaining', ARGV[5], 'valid_from_ms', ARGV[6], 'valid_from', ARGV[7],
  'valid_until_ms', ARGV[8], 'valid_until', ARGV[9], 'created_at', ARGV[10], 'create_event', ARGV[11])
outbox(KEYS[2], ARGV[11], 'coupon.created', 'coupon:' .. ARGV[1], ARGV[10], {
  coupon_id = tonumber(ARGV[1]), name = ARGV[2], discount_type = ARGV[3], discount_value = tonumber(ARGV[4]),
  total_quantity = tonumber(ARGV[5]), valid_from = ARGV[7], valid_until = ARGV[9], created_at = ARGV[10],
})
return ok(201, view())
