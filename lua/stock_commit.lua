-- stock_commit: a PAID order's hold becomes a sale: the hold and its pending entry go, the stock stays
-- consumed. Run by the saga worker for every order.paid event. Idempotent: when the hold is gone
-- nothing changes.
-- KEYS[1] product holds hash    fs:{P}:product:ID:holds
-- KEYS[2] pending holds zset    fs:{P}:holds:pending (the product's partition)
-- ARGV[1] product id   ARGV[2] order id   ARGV[3] member id
-- Returns 'committed', 'gone' or 'other_member' (the order id holds it for another member: left alone).
local entry = ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3]
local held = redis.call('HGET', KEYS[1], ARGV[2])
if not held then
  redis.call('ZREM', KEYS[2], entry)
  return 'gone'
end
local _, member = string.match(held, '^([^|]*)|([^|]*)|')
if member ~= ARGV[3] then
  return 'other_member'
end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], entry)
return 'committed'
