-- stock_release: gives an UNPAID order's hold back: stock += qty, the hold and its pending entry go.
-- Run for a reserve that did not complete (src/orders.rs), a cancelled reserved order, an expired
-- order (inline by the engine and again by the saga worker from the event), and by the orphan sweep.
-- Idempotent by order id: when the hold is gone (released, committed) nothing changes.
-- KEYS[1] product hash          fs:{P}:product:ID
-- KEYS[2] product holds hash    fs:{P}:product:ID:holds
-- KEYS[3] pending holds zset    fs:{P}:holds:pending (the product's partition)
-- KEYS[4] bought hash           fs:{P}:product:ID:bought (the member's live units go down by qty)
-- ARGV[1] product id   ARGV[2] order id   ARGV[3] member id
-- ARGV[4] orphan margin (ms), or '' for an unconditional release. With a margin (the orphan sweep)
--         the hold goes only while it is still pending (no order confirmed it) and Redis time is
--         past its deadline + margin: the margin covers clock skew between the product's node and the
--         member's node, whose step refuses after the deadline by its own clock.
-- ARGV[5] invalidation channel: 'product:ID' is published there when units came back, so every
--         engine drops its sold-out marker (src/sold_out.rs). A channel, not a key.
-- Returns 'released'; 'gone' (no hold for this order); 'other_member' (the order id holds this
-- product for another member: left alone); 'confirmed' / 'not_due' (orphan mode: left alone).
local entry = ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3]
local held = redis.call('HGET', KEYS[2], ARGV[2])
if not held then
  redis.call('ZREM', KEYS[3], entry)
  return 'gone'
end
local qty, member = string.match(held, '^([^|]*)|([^|]*)|')
if member ~= ARGV[3] then
  return 'other_member'
end
if ARGV[4] ~= '' then
  local deadline = redis.call('ZSCORE', KEYS[3], entry)
  if not deadline then
    return 'confirmed'
  end
  if tonumber(deadline) + tonumber(ARGV[4]) > now_ms() then
    return 'not_due'
  end
end
if redis.call('HEXISTS', KEYS[1], 'id') == 1 then
  redis.call('HINCRBY', KEYS[1], 'stock', qty)
end
bought_less(KEYS[4], member, qty)
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], entry)
redis.call('PUBLISH', ARGV[5], 'product:' .. ARGV[1])
return 'released'
