-- member_signup: registers a member under a unique email.
-- KEYS[1] email key        fs:email:{e:EMAIL}
-- KEYS[2] member hash      fs:member:{m:ID}
-- KEYS[3] outbox stream    fs:outbox:{outbox}
-- ARGV[1] member id (allocated by the engine)   ARGV[2] email (lower-cased)   ARGV[3] name
-- ARGV[4] argon2id PHC hash   ARGV[5] now (RFC 3339)   ARGV[6] event id
-- Returns (prelude protocol):
--   ok 201 {id, email, name}            created, or the same call resent (email already maps to ARGV[1])
--   err 409 EMAIL_TAKEN                 another member owns the email
-- Event: member.registered
local existing = redis.call('GET', KEYS[1])
if existing then
  if existing == ARGV[1] then
    return ok(201, { id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3] })
  end
  return fail(409, 'EMAIL_TAKEN', 'an account with this email already exists')
end

redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'email', ARGV[2], 'name', ARGV[3], 'password_hash', ARGV[4],
  'balance', '0', 'created_at', ARGV[5])
outbox(KEYS[3], ARGV[6], 'member.registered', 'member:' .. ARGV[1], ARGV[5], {
  member_id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3], password_hash = ARGV[4], created_at = ARGV[5],
})
return ok(201, { id = tonumber(ARGV[1]), email = ARGV[2], name = ARGV[3] })
