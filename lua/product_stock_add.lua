-- product_stock_add (admin): adds units to a product's stock.
-- KEYS[1] product hash          fs:{P}:product:ID
-- KEYS[2] product ops zset      fs:{P}:product:ID:ops (recent op ids: a resent call adds nothing)
-- KEYS[3] outbox stream         fs:{P}:outbox (the owner's partition)
-- ARGV[1] units to add (> 0)   ARGV[2] stock limit   ARGV[3] now (ms)   ARGV[4] now (RFC 3339)
-- ARGV[5] event id (op id)
-- ARGV[6] invalidation channel: 'product:ID' is published there, so every engine drops its sold-out
--         marker (src/sold_out.rs). A channel, not a key.
-- Returns (prelude protocol):
--   ok 200 {id, name, price, stock}     added (or this very call resent: nothing added twice)
--   err 404 NOT_FOUND                   no such product
--   err 422 VALIDATION_FAILED           stock would pass the limit
-- Event: product.stock_added
local p = redis.call('HMGET', KEYS[1], 'id', 'stock')
if not p[1] then
  return fail(404, 'NOT_FOUND', 'product not found')
end
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  return ok(200, product_view(hgetall(KEYS[1])))
end
local after = tonumber(p[2]) + tonumber(ARGV[1])
if after > tonumber(ARGV[2]) then
  return fail(422, 'VALIDATION_FAILED', 'add: stock may not exceed ' .. ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'stock', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(tonumber(ARGV[3]) - 3600000))
outbox(KEYS[3], ARGV[5], 'product.stock_added', 'product:' .. p[1], ARGV[4], {
  product_id = tonumber(p[1]), add = tonumber(ARGV[1]), stock_after = after,
})
redis.call('PUBLISH', ARGV[6], 'product:' .. p[1])
return ok(200, product_view(hgetall(KEYS[1])))
