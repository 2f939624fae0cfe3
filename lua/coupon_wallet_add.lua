-- coupon_wallet_add: the member-side step of a coupon issue (a saga step, run by the saga worker for
-- every coupon.issued event; src/pipeline/saga.rs). The coupon's own slot already decided the issue
-- (coupon_issue.lua); this puts the coupon in the member's wallet with the terms pay needs, so paying
-- with it touches the member's slot only. Idempotent by coupon id: a second run (a redelivered event,
-- two engines) changes nothing.
-- KEYS[1] member hash           fs:{P}:member:ID
-- KEYS[2] member coupons hash   fs:{P}:member:ID:coupons
-- ARGV[1] coupon id   ARGV[2] wallet entry (see wallet_entry in the prelude)
-- Returns 'added', 'present' (already in the wallet: nothing written) or 'no_member' (the member is
-- unknown to Redis: nothing written; the engine counts it).
if not redis.call('HGET', KEYS[1], 'id') then
  return 'no_member'
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  return 'added'
end
return 'present'
