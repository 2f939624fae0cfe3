-- member_signup: step 2 of a sign-up (src/signup.rs), in the member's slot: creates the member once
-- email_claim.lua claimed the address for this id in the address's own slot. Never overwrites a
-- member: the hash must be absent, or be this very call's (same create event id: a resent script).
-- KEYS[1] member hash      fs:{P}:member:ID
-- KEYS[2] outbox stream    fs:{P}:outbox (the member's partition)
-- ARGV[1] member id (allocated by the engine)   ARGV[2] email (normalized: NFKC, lower-case)   ARGV[3] name
-- ARGV[4] argon2id PHC hash (kept in Redis for login; never put in the event)   ARGV[5] event id
-- ARGV[6] claim deadline (ms, Redis time of the address's node): refused after it, so a late step
--         never creates a member whose claim the sweep may already have released
-- Returns (prelude protocol):
--   ok 201 {id, email, name}            created, or this very call resent (same event id)
--   err 409 CONFLICT                    the member id is taken by another member (an id-sequence fault;
--                                       the engine logs it and counts flashsale_entity_conflicts_total)
--   err 503 SERVICE_UNAVAILABLE         Redis time is past the claim deadline: nothing written; the
--                                       engine releases the claim and the client retries
-- created_at is Redis time.
-- Event: member.registered {member_id, email, name, created_at} (no password hash: the engine wrote it to
-- MySQL member_credentials before this script ran)
local view = { id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3] }
local m = redis.call('HMGET', KEYS[1], 'id', 'create_event')
if m[1] or m[2] then
  if m[2] == ARGV[5] then
    return ok(201, view)
  end
  return fail(409, 'CONFLICT', 'member id already in use')
end
local now = now_ms()
if now > tonumber(ARGV[6]) then
  return refuse_unstored(503, 'SERVICE_UNAVAILABLE', 'the e-mail claim lapsed before the member was written; retry')
end

local created_at = rfc3339(now)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'email', ARGV[2], 'name', ARGV[3], 'password_hash', ARGV[4],
  'balance', '0', 'created_at', created_at, 'create_event', ARGV[5])
outbox(KEYS[2], ARGV[5], 'member.registered', 'member:' .. ARGV[1], created_at, {
  member_id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3], created_at = created_at,
})
return ok(201, view)
