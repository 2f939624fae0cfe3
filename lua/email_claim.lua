-- email_claim: step 1 of a sign-up (src/signup.rs), in the e-mail address's slot: claims the address
-- for the new member id. The claim is pending until the member exists (email_confirm.lua); a crash in
-- between is settled by the claim sweep (confirmed when the member exists, else released after the
-- deadline + margin). Login reads the same key (address -> member id), so a pending claim of a member
-- that does not exist yet simply fails login like an unknown address.
-- KEYS[1] email key              fs:{P}:email:EMAIL
-- KEYS[2] pending claims zset    fs:{P}:emails:pending of the address's partition (member
--                                `member_id:email`, score = deadline_ms; read by the claim sweep)
-- ARGV[1] member id   ARGV[2] email (normalized)   ARGV[3] claim TTL (ms)
-- deadline_ms = Redis time + ARGV[3]: the member step refuses after it, the sweep releases the claim
-- some margin after it when the member was never written.
-- Returns an array:
--   { 'claimed', deadline_ms }   claimed now, or already claimed (still pending) by this member id:
--                                the same answer, nothing written
--   { 'confirmed' }              the address already names this member id, confirmed (a resend)
--   { 'taken' }                  the address names another member id (pending or not); nothing written
local owner = redis.call('GET', KEYS[1])
local entry = ARGV[1] .. ':' .. ARGV[2]
if owner then
  if owner ~= ARGV[1] then
    return { 'taken' }
  end
  local deadline = redis.call('ZSCORE', KEYS[2], entry)
  if deadline then
    return { 'claimed', tonumber(deadline) }
  end
  return { 'confirmed' }
end
local deadline = now_ms() + tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], deadline, entry)
return { 'claimed', deadline }
