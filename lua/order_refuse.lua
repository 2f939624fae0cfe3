-- order_refuse: the member-slot end of an order reserve whose holds failed (src/orders.rs): stores the
-- refusal in the idempotency record, so a replay of the same Idempotency-Key answers the same problem,
-- and writes nothing else. The holds already taken are released by the engine.
-- KEYS[1] member hash           fs:{P}:member:ID
-- KEYS[2] idempotency key       fs:{P}:idem:MEMBER:SHA
-- ARGV[1] request fingerprint   ARGV[2] idempotency TTL (s)
-- ARGV[3] status   ARGV[4] problem code   ARGV[5] detail
-- ARGV[6] problem extension members (JSON object text) or ''
-- Returns (prelude protocol):
--   err 404 NOT_FOUND            member unknown to Redis (stale token): nothing written
--   err ARGV[3] ARGV[4]          the refusal, now recorded
--   replay / reused              the key already has a result (a concurrent call with the same key
--                                finished first): that result
if not redis.call('HGET', KEYS[1], 'id') then
  return refuse_unstored(404, 'NOT_FOUND', 'member not found')
end
local early = idem_begin(KEYS[2], ARGV[1], ARGV[2])
if early then return early end
return fail(tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6])
