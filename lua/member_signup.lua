-- member_signup: registers a member under a unique email. Never overwrites a member: the hash must be
-- absent, or be this very call's (same create event id: a resent script).
-- KEYS[1] email key        fs:{P}:email:EMAIL
-- KEYS[2] member hash      fs:{P}:member:ID
-- KEYS[3] outbox stream    fs:{P}:outbox (the owner's partition)
-- ARGV[1] member id (allocated by the engine)   ARGV[2] email (normalized: NFKC, lower-case)   ARGV[3] name
-- ARGV[4] argon2id PHC hash (kept in Redis for login; never put in the event)   ARGV[5] event id
-- Returns (prelude protocol):
--   ok 201 {id, email, name}            created, or this very call resent (same event id)
--   err 409 CONFLICT                    the member id is taken by another member (an id-sequence fault;
--                                       the engine logs it and counts flashsale_entity_conflicts_total)
--   err 409 EMAIL_TAKEN                 another member owns the email
-- created_at is Redis time.
-- Event: member.registered {member_id, email, name, created_at} (no password hash: the engine wrote it to
-- MySQL member_credentials before this script ran)
local view = { id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3] }
local m = redis.call('HMGET', KEYS[2], 'id', 'create_event')
if m[1] or m[2] then
  if m[2] == ARGV[5] then
    return ok(201, view)
  end
  return fail(409, 'CONFLICT', 'member id already in use')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return fail(409, 'EMAIL_TAKEN', 'an account with this email already exists')
end

local created_at = rfc3339(now_ms())
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'email', ARGV[2], 'name', ARGV[3], 'password_hash', ARGV[4],
  'balance', '0', 'created_at', created_at, 'create_event', ARGV[5])
outbox(KEYS[3], ARGV[5], 'member.registered', 'member:' .. ARGV[1], created_at, {
  member_id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3], created_at = created_at,
})
return ok(201, view)
