-- product_create (admin): adds a product with its initial stock.
-- KEYS[1] product hash           fs:{P}:product:ID
-- KEYS[2] products index zset    fs:{catalog}:products
-- KEYS[3] outbox stream          fs:{P}:outbox (the owner's partition)
-- ARGV[1] product id (allocated by the engine)   ARGV[2] name   ARGV[3] price   ARGV[4] stock
-- ARGV[5] now (RFC 3339)   ARGV[6] event id
-- Returns (prelude protocol):
--   ok 201 {id, name, price, stock}     created, or this very call resent (same event id)
--   err 409 CONFLICT                    the id is taken by another product (an id-sequence fault)
-- Event: product.created
local existing = redis.call('HGET', KEYS[1], 'create_event')
if existing then
  if existing == ARGV[6] then
    return ok(201, product_view(hgetall(KEYS[1])))
  end
  return fail(409, 'CONFLICT', 'product id already in use')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[2], 'price', ARGV[3], 'stock', ARGV[4],
  'created_at', ARGV[5], 'create_event', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
outbox(KEYS[3], ARGV[6], 'product.created', 'product:' .. ARGV[1], ARGV[5], {
  product_id = tonumber(ARGV[1]), name = ARGV[2], price = tonumber(ARGV[3]), stock = tonumber(ARGV[4]),
  created_at = ARGV[5],
})
return ok(201, { id = tonumber(ARGV[1]), name = ARGV[2], price = tonumber(ARGV[3]), stock = tonumber(ARGV[4]) })
