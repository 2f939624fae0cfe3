-- email_confirm: the member of a claim exists: the claim leaves the pending index (the sweep no
-- longer looks at it); the e-mail key stays. Run inline after the member step and by the claim sweep
-- when the member exists with this address. Idempotent.
-- KEYS[1] pending claims zset    fs:{P}:emails:pending (the address's partition)
-- ARGV[1] member id   ARGV[2] email
-- Returns 'confirmed' (the entry was pending) or 'gone'.
if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2]) == 1 then
  return 'confirmed'
end
return 'gone'
