-- coupon_issue: first-come issue of one coupon to one member, decided in the COUPON's slot alone: the
-- coupon's count and holders are the only state that must never be exceeded or doubled. The member's
-- wallet entry follows as a saga step (coupon_wallet_add.lua, run from this script's event by
-- src/pipeline/saga.rs), so the issue is one Redis call on one slot.
-- KEYS[1] coupon hash           fs:{P}:coupon:ID
-- KEYS[2] coupon holders hash   fs:{P}:coupon:ID:holders (member id -> issue event id|issued_at)
-- KEYS[3] idempotency key       fs:{P}:idem:MEMBER:SHA in the coupon's partition (ignored when ARGV[3] is '0')
-- KEYS[4] outbox stream         fs:{P}:outbox (the coupon's partition)
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] '1' when an Idempotency-Key was sent
-- ARGV[4] member id   ARGV[5] event id
-- Validity is checked against Redis time, which also stamps issued_at.
-- Returns (prelude protocol):
--   ok 201 {coupon_id, issued_at}     issued (or this very call resent: same event id)
--   err 404 NOT_FOUND                 no such coupon
--   err 422 COUPON_NOT_ACTIVE         outside valid_from .. valid_until
--   err 409 COUPON_ALREADY_ISSUED     the member holds it already
--   err 409 COUPON_SOLD_OUT           none left
--   replay / reused                   see prelude
-- Event: coupon.issued {coupon_id, member_id, issued_at, remaining_after, wallet} where wallet is the
-- member's wallet entry (the coupon's terms, so paying with it needs the member's slot only).
if ARGV[3] == '1' then
  local early = idem_begin(KEYS[3], ARGV[1], ARGV[2])
  if early then return early end
end

local c = redis.call('HMGET', KEYS[1], 'id', 'remaining', 'valid_from_ms', 'valid_until_ms', 'discount_type',
  'discount_value')
if not c[1] then
  return fail(404, 'NOT_FOUND', 'coupon not found')
end
local now = now_ms()
local issued_at = rfc3339(now)
if now < tonumber(c[3]) or now > tonumber(c[4]) then
  return fail(422, 'COUPON_NOT_ACTIVE', 'coupon is not valid at this time')
end
local held = redis.call('HGET', KEYS[2], ARGV[4])
if held then
  local _, _, event_id, first_issued_at = string.find(held, '^([^|]*)|(.*)$')
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
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5] .. '|' .. issued_at)
local wallet = wallet_entry({ issued_ms = now, used = '0', event_id = ARGV[5], issued_at = issued_at,
  discount_type = c[5], discount_value = c[6], valid_from_ms = c[3], valid_until_ms = c[4] })
outbox(KEYS[4], ARGV[5], 'coupon.issued', 'coupon:' .. c[1], issued_at, {
  coupon_id = tonumber(c[1]), member_id = tonumber(ARGV[4]), issued_at = issued_at, remaining_after = remaining,
  wallet = wallet,
})
return ok(201, { coupon_id = tonumber(c[1]), issued_at = issued_at })
