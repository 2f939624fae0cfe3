-- email_claims_due: the claim sweep's read (src/signup.rs): pending e-mail claims of one partition
-- whose deadline plus the margin is past by THIS node's clock (the address's node, the one whose
-- email_release decides). Writes nothing.
-- KEYS[1] pending claims zset    fs:{P}:emails:pending
-- ARGV[1] margin (ms)   ARGV[2] most entries to return
-- Returns the entries (`member_id:email`), oldest deadline first.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
