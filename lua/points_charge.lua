-- points_charge: adds points to a member's balance.
-- KEYS[1] member hash      fs:{P}:member:ID
-- KEYS[2] idempotency key  fs:{P}:idem:MEMBER:SHA
-- KEYS[3] outbox stream    fs:{P}:outbox (the owner's partition)
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] amount (> 0, validated)
-- ARGV[4] balance limit   ARGV[5] event id
-- Returns (prelude protocol):
--   err 404 NOT_FOUND                       member unknown to Redis (stale token): nothing written, not
--                                           even the idempotency record
--   ok 200 {balance}                        charged
--   err 409 BALANCE_LIMIT_EXCEEDED          balance + amount would pass the limit; nothing changed
--   replay / reused                         see prelude
-- The event's `at` is Redis time.
-- Event: points.charged
local m = redis.call('HMGET', KEYS[1], 'id', 'balance')
if not m[1] then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
local early = idem_begin(KEYS[2], ARGV[1], ARGV[2])
if early then return early end

local member_id = tonumber(m[1])
local amount = tonumber(ARGV[3])
local after = tonumber(m[2] or '0') + amount
if after > tonumber(ARGV[4]) then
  return fail(409, 'BALANCE_LIMIT_EXCEEDED', 'balance may not exceed ' .. ARGV[4] .. ' points')
end

redis.call('HINCRBY', KEYS[1], 'balance', ARGV[3])
outbox(KEYS[3], ARGV[5], 'points.charged', 'member:' .. int(member_id), rfc3339(now_ms()), {
  member_id = member_id, amount = amount, balance_after = after,
})
return ok(200, { balance = after })
