-- hold_confirm: the order owning a hold was written: the hold leaves the pending index (the orphan
-- sweep no longer looks at it); the hold itself stays until the order is paid (commit), cancelled or
-- expired (release/return). Run by the saga worker for order.reserved and by the orphan sweep when
-- the order exists. Idempotent.
-- KEYS[1] pending holds zset    fs:{P}:holds:pending (the product's partition)
-- ARGV[1] product id   ARGV[2] order id   ARGV[3] member id
-- Returns 'confirmed' (the entry was pending) or 'gone'.
if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3]) == 1 then
  return 'confirmed'
end
return 'gone'
