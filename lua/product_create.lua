-- product_create (admin): adds a product with its initial stock. The listing index entry
-- (fs:{catalog}:products, another slot) is written by the engine BEFORE this script (src/routes/products.rs):
-- a crash in between leaves an index entry without a product, which readers skip.
-- KEYS[1] product hash           fs:{P}:product:ID
-- KEYS[2] outbox stream          fs:{P}:outbox (the owner's partition)
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
outbox(KEYS[2], ARGV[6], 'product.created', 'product:' .. ARGV[1], ARGV[5], {
  product_id = tonumber(ARGV[1]), name = ARGV[2], price = tonumber(ARGV[3]), stock = tonumber(ARGV[4]),
  created_at = ARGV[5],
})
return ok(201, { id = tonumber(ARGV[1]), name = ARGV[2], price = tonumber(ARGV[3]), stock = tonumber(ARGV[4]) })
