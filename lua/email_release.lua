-- email_release: gives a PENDING claim's address back: the e-mail key is deleted only while it still
-- names this member id (compare-and-delete), and the pending entry goes. Run inline when the member
-- step refused (src/signup.rs) and by the claim sweep when the member never came. A confirmed claim is
-- never released (its member exists and logs in with it).
-- KEYS[1] email key              fs:{P}:email:EMAIL
-- KEYS[2] pending claims zset    fs:{P}:emails:pending (the address's partition)
-- ARGV[1] member id   ARGV[2] email
-- ARGV[3] sweep margin (ms), or '' for an unconditional release. With a margin (the sweep) the claim
--         goes only once Redis time is past its deadline + margin: the margin covers clock skew
--         between the address's node and the member's node, whose step refuses after the deadline
--         by its own clock.
-- Returns 'released' (key deleted, entry gone); 'gone' (pending entry dropped, but the key no longer
-- names this member: left alone); 'confirmed' (not pending, the key names this member: left alone);
-- 'absent' (neither pending nor named); 'not_due' (sweep mode: left alone).
local entry = ARGV[1] .. ':' .. ARGV[2]
local deadline = redis.call('ZSCORE', KEYS[2], entry)
local named = redis.call('GET', KEYS[1]) == ARGV[1]
if not deadline then
  if named then
    return 'confirmed'
  end
  return 'absent'
end
if ARGV[3] ~= '' and tonumber(deadline) + tonumber(ARGV[3]) > now_ms() then
  return 'not_due'
end
redis.call('ZREM', KEYS[2], entry)
if not named then
  return 'gone'
end
redis.call('DEL', KEYS[1])
return 'released'
