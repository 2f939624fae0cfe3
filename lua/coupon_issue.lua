-- coupon_issue: first-come issue of one coupon to one member.
-- KEYS[1] coupon hash           fs:{P}:coupon:ID
-- KEYS[2] coupon holders set    fs:{P}:coupon:ID:holders
-- KEYS[3] member coupons hash   fs:{P}:member:ID:coupons
-- KEYS[4] idempotency key       fs:{P}:idem:MEMBER:SHA (ignored when ARGV[3] is '0')
-- KEYS[5] outbox stream         fs:{P}:outbox (the owner's partition)
-- KEYS[6] member hash           fs:{P}:member:ID
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] '1' when an Idempotency-Key was sent
-- ARGV[4] member id   ARGV[5] event id
-- Validity is checked against Redis time, which also stamps issued_at.
-- Returns (prelude protocol):
--   err 404 NOT_FOUND                 member unknown to Redis (stale token): nothing written
--   ok 201 {coupon_id, issued_at}     issued (or this very call resent: same event id)
--   err 404 NOT_FOUND                 no such coupon
--   err 422 COUPON_NOT_ACTIVE         outside valid_from .. valid_until
--   err 409 COUPON_ALREADY_ISSUED     the member holds it already
--   err 409 COUPON_SOLD_OUT           none left
--   replay / reused                   see prelude
-- Member coupons entry: "issued_ms|used_order_id (0 = unused)|issue_event_id|issued_at"
-- Event: coupon.issued
if not redis.call('HGET', KEYS[6], 'id') then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
if ARGV[3] == '1' then
  local early = idem_begin(KEYS[4], ARGV[1], ARGV[2])
  if early then return early end
end

local c = redis.call('HMGET', KEYS[1], 'id', 'remaining', 'valid_from_ms', 'valid_until_ms')
if not c[1] then
  return fail(404, 'NOT_FOUND', 'coupon not found')
end
local now = now_ms()
local issued_at = rfc3339(now)
if now < tonumber(c[3]) or now > tonumber(c[4]) then
  return fail(422, 'COUPON_NOT_ACTIVE', 'coupon is not valid at this time')
end
local held = redis.call('HGET', KEYS[3], c[1])
if held then
  local _, _, _, _, event_id, first_issued_at = string.find(held, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if event_id == ARGV[5] then
    -- The client resent this very command after a reconnect: answer as the first run did.
    return ok(201, { coupon_id = tonumber(c[1]), issued_at = first_issued_at })
  end
  return fail(409, 'COUPON_ALREADY_ISSUED', 'this member already holds the coupon')
end
if tonumber(c[2]) <= 0 then
  return fail(409, 'COUPON_SOLD_OUT', 'no coupons left')
end

local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], c[1], int(now) .. '|0|' .. ARGV[5] .. '|' .. issued_at)
outbox(KEYS[5], ARGV[5], 'coupon.issued', 'coupon:' .. c[1], issued_at, {
  coupon_id = tonumber(c[1]), member_id = tonumber(ARGV[4]), issued_at = issued_at, remaining_after = remaining,
})
return ok(201, { coupon_id = tonumber(c[1]), issued_at = issued_at })
