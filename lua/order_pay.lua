-- order_pay: pays a reserved order with points, optionally using a held coupon, and counts the units
-- in the popular ranking: all or nothing.
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] member hash           fs:{P}:member:ID
-- KEYS[3] member coupons hash   fs:{P}:member:ID:coupons
-- KEYS[4] reservations zset     fs:{P}:reservations
-- KEYS[5] popular day zset      fs:{P}:popular:YYYYMMDD (today, UTC)
-- KEYS[6] idempotency key       fs:{P}:idem:MEMBER:SHA
-- KEYS[7] outbox stream         fs:{P}:outbox (the owner's partition)
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] member id   ARGV[4] coupon id or ''
-- ARGV[5] today YYYYMMDD (the engine's popular bucket)   ARGV[6] popular day TTL (s)   ARGV[7] event id
-- Order expiry and coupon validity are checked against Redis time, which also stamps paid_at.
-- Returns (prelude protocol):
--   err 404 NOT_FOUND                 member unknown to Redis (stale token): nothing written
--   ok 200 order                      paid; status PAID
--   err 404 NOT_FOUND                 no such order, or another member's
--   err 409 ORDER_EXPIRED             expired, or past its expiry and not yet swept
--   err 409 ORDER_NOT_PAYABLE         already paid or cancelled
--   err 409 COUPON_NOT_USABLE         coupon not held, already used, unknown or outside its validity
--   err 409 INSUFFICIENT_POINTS       balance below the amount due; nothing changed
--   replay / reused                   see prelude
-- Event: order.paid
if not redis.call('HGET', KEYS[2], 'id') then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
local early = idem_begin(KEYS[6], ARGV[1], ARGV[2])
if early then return early end

local o = hgetall(KEYS[1])
if not o.id or o.member_id ~= ARGV[3] then
  return fail(404, 'NOT_FOUND', 'order not found')
end
local now = now_ms()
if o.status == 'EXPIRED' or (o.status == 'RESERVED' and now >= tonumber(o.expires_at_ms)) then
  return fail(409, 'ORDER_EXPIRED', 'the reservation expired before payment')
end
if o.status ~= 'RESERVED' then
  return fail(409, 'ORDER_NOT_PAYABLE', 'order is ' .. o.status)
end

local total = tonumber(o.total_amount)
local discount = 0
local coupon_id = ARGV[4]
local coupon_entry = nil
if coupon_id ~= '' then
  -- The wallet entry carries the coupon's terms (they never change): the member's slot decides alone.
  local held = redis.call('HGET', KEYS[3], coupon_id)
  if not held then
    return fail(409, 'COUPON_NOT_USABLE', 'the member does not hold this coupon')
  end
  local w = wallet_parse(held)
  if w.used ~= '0' then
    return fail(409, 'COUPON_NOT_USABLE', 'the coupon was already used')
  end
  if now < tonumber(w.valid_from_ms) or now > tonumber(w.valid_until_ms) then
    return fail(409, 'COUPON_NOT_USABLE', 'the coupon is not valid at this time')
  end
  local value = tonumber(w.discount_value)
  if w.discount_type == 'PERCENT' then
    discount = math.floor(total * value / 100)
  else
    discount = value
  end
  if discount > total then discount = total end
  w.used = o.id
  coupon_entry = wallet_entry(w)
end
local paid = total - discount
local balance = tonumber(redis.call('HGET', KEYS[2], 'balance') or '0')
if balance < paid then
  return fail(409, 'INSUFFICIENT_POINTS', 'order needs ' .. int(paid) .. ' points, balance is ' .. int(balance))
end

local balance_after = redis.call('HINCRBY', KEYS[2], 'balance', int(-paid))
if coupon_entry then
  redis.call('HSET', KEYS[3], coupon_id, coupon_entry)
end
o.status, o.discount_amount, o.paid_amount = 'PAID', int(discount), int(paid)
o.coupon_id, o.paid_at, o.paid_day = coupon_id, rfc3339(now), ARGV[5]
redis.call('HSET', KEYS[1], 'status', o.status, 'discount_amount', o.discount_amount, 'paid_amount', o.paid_amount,
  'coupon_id', o.coupon_id, 'paid_at', o.paid_at, 'paid_day', o.paid_day)
redis.call('ZREM', KEYS[4], o.id)
for _, item in ipairs(cjson.decode(o.items)) do
  redis.call('ZINCRBY', KEYS[5], int(item.quantity), int(item.product_id))
end
redis.call('EXPIRE', KEYS[5], ARGV[6])
-- Encoded once (JSON text), for the event and the reply.
local snapshot = order_snapshot(o)
outbox(KEYS[7], ARGV[7], 'order.paid', 'order:' .. o.id, o.paid_at, { order = snapshot, balance_after = balance_after })
return ok(200, snapshot)
