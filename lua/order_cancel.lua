-- order_cancel: the member-slot step of a cancel (src/orders.rs): cancels a reserved or paid order; for
-- a paid order it also gives back the points, the coupon (unused again) and the units counted in the
-- popular ranking. The stock lives in each product's slot: the engine gives it back right after this
-- step (stock_release.lua for a reserved order, stock_return.lua for a paid one) and the saga worker
-- does the same from this script's event, so a crash between the steps is completed by any engine.
-- KEYS[1] order hash            fs:{P}:order:ID (the member's partition)
-- KEYS[2] member hash           fs:{P}:member:ID
-- KEYS[3] member coupons hash   fs:{P}:member:ID:coupons
-- KEYS[4] reservations zset     fs:{P}:reservations
-- KEYS[5] popular day zset      fs:{P}:popular:YYYYMMDD of the engine's day. A paid order's units come
--                               back from the day it was paid: the script names that day's key by
--                               replacing the date at the end of KEYS[5] (same partition tag, so the
--                               same slot: the member's).
-- KEYS[6] idempotency key       fs:{P}:idem:MEMBER:SHA
-- KEYS[7] outbox stream         fs:{P}:outbox (the owner's partition)
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] member id   ARGV[4] event id
-- closed_at is Redis time.
-- Returns (prelude protocol):
--   err 404 NOT_FOUND                  member unknown to Redis (stale token): nothing written
--   ok 200 order                       cancelled; status CANCELLED
--   err 404 NOT_FOUND                  no such order, or another member's
--   err 409 ORDER_NOT_CANCELLABLE      already cancelled or expired
--   replay / reused                    see prelude
-- Event: order.cancelled
if not redis.call('HGET', KEYS[2], 'id') then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
local early = idem_begin(KEYS[6], ARGV[1], ARGV[2])
if early then return early end

local o = hgetall(KEYS[1])
if not o.id or o.member_id ~= ARGV[3] then
  return fail(404, 'NOT_FOUND', 'order not found')
end
if o.status ~= 'RESERVED' and o.status ~= 'PAID' then
  return fail(409, 'ORDER_NOT_CANCELLABLE', 'order is ' .. o.status)
end
local items = cjson.decode(o.items)

local previous = o.status
local refunded, balance_after = 0, cjson.null
if previous == 'PAID' then
  refunded = tonumber(o.paid_amount)
  balance_after = redis.call('HINCRBY', KEYS[2], 'balance', int(refunded))
  if o.coupon_id ~= '' then
    local held = redis.call('HGET', KEYS[3], o.coupon_id)
    if held then
      local w = wallet_parse(held)
      w.used = '0'
      redis.call('HSET', KEYS[3], o.coupon_id, wallet_entry(w))
    end
  end
  local popular = KEYS[5]
  if string.match(o.paid_day or '', '^%d%d%d%d%d%d%d%d$') then
    popular = string.sub(KEYS[5], 1, #KEYS[5] - 8) .. o.paid_day
  end
  for _, item in ipairs(items) do
    local left = tonumber(redis.call('ZINCRBY', popular, int(-item.quantity), int(item.product_id)))
    if left <= 0 then
      redis.call('ZREM', popular, int(item.product_id))
    end
  end
else
  redis.call('ZREM', KEYS[4], o.id)
end
o.status, o.closed_at = 'CANCELLED', rfc3339(now_ms())
redis.call('HSET', KEYS[1], 'status', o.status, 'closed_at', o.closed_at)
-- Encoded once (JSON text), for the event and the reply.
local snapshot = order_snapshot(o)
outbox(KEYS[7], ARGV[4], 'order.cancelled', 'order:' .. o.id, o.closed_at, {
  order = snapshot, previous_status = previous, refunded_amount = refunded, balance_after = balance_after,
})
return ok(200, snapshot)
