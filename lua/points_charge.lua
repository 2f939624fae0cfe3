-- points_charge: adds points to a member's balance.
-- KEYS[1] member hash      fs:member:{m:ID}
-- KEYS[2] idempotency key  fs:idem:{m:ID}:SHA
-- KEYS[3] outbox stream    fs:outbox:{outbox}
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)   ARGV[3] amount (> 0, validated)
-- ARGV[4] balance limit   ARGV[5] now (RFC 3339)   ARGV[6] event id
-- Returns (prelude protocol):
--   ok 200 {balance}                        charged
--   err 404 NOT_FOUND                       member unknown to Redis
--   err 409 BALANCE_LIMIT_EXCEEDED          balance + amount would pass the limit; nothing changed
--   replay / reused                         see prelude
-- Event: points.charged
local early = idem_begin(KEYS[2], ARGV[1], ARGV[2])
if early then return early end

local balance = redis.call('HGET', KEYS[1], 'balance')
if not balance then
  return fail(404, 'NOT_FOUND', 'member not found')
end
local amount = tonumber(ARGV[3])
local after = tonumber(balance) + amount
if after > tonumber(ARGV[4]) then
  return fail(409, 'BALANCE_LIMIT_EXCEEDED', 'balance may not exceed ' .. ARGV[4] .. ' points')
end

redis.call('HINCRBY', KEYS[1], 'balance', ARGV[3])
local member_id = tonumber(redis.call('HGET', KEYS[1], 'id'))
outbox(KEYS[3], ARGV[6], 'points.charged', 'member:' .. int(member_id), ARGV[5], {
  member_id = member_id, amount = amount, balance_after = after,
})
return ok(200, { balance = after })
