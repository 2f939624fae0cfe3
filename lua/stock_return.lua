-- stock_return: a PAID order was cancelled: its units come back to the product's stock, exactly once
-- per order (the product's `returned` set remembers the orders; it grows only with refunds). Run
-- inline by the engine after the cancel and again by the saga worker from order.cancelled. A hold the
-- commit step has not removed yet goes too (the commit then finds nothing).
-- KEYS[1] product hash          fs:{P}:product:ID
-- KEYS[2] product holds hash    fs:{P}:product:ID:holds
-- KEYS[3] pending holds zset    fs:{P}:holds:pending (the product's partition)
-- KEYS[4] returned set          fs:{P}:product:ID:returned (order ids)
-- KEYS[5] bought hash           fs:{P}:product:ID:bought (the member's live units go down)
-- ARGV[1] product id   ARGV[2] order id   ARGV[3] member id   ARGV[4] quantity (the order's item)
-- ARGV[5] invalidation channel: 'product:ID' is published there, so every engine drops its sold-out
--         marker (src/sold_out.rs). A channel, not a key.
-- Returns 'returned' or 'already' (this order's units came back before: nothing written).
if redis.call('SADD', KEYS[4], ARGV[2]) == 0 then
  return 'already'
end
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
  local _, member = string.match(held, '^([^|]*)|([^|]*)|')
  if member == ARGV[3] then
    redis.call('HDEL', KEYS[2], ARGV[2])
  end
end
redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'id') == 1 then
  redis.call('HINCRBY', KEYS[1], 'stock', int(tonumber(ARGV[4])))
end
bought_less(KEYS[5], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'product:' .. ARGV[1])
return 'returned'
