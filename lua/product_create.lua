-- product_create (admin): adds a product with its initial stock. The listing index entry
-- (fs:{catalog}:products, another slot) is written by the engine BEFORE this script (src/routes/products.rs):
-- a crash in between leaves an index entry without a product, which readers skip.
-- KEYS[1] product hash           fs:{P}:product:ID
-- KEYS[2] outbox stream          fs:{P}:outbox (the owner's partition)
-- ARGV[1] product id (allocated by the engine)   ARGV[2] name   ARGV[3] price   ARGV[4] stock
-- ARGV[5] now (RFC 3339)   ARGV[6] event id
-- ARGV[7] sale_starts_ms   ARGV[8] sale_ends_ms   ARGV[9] per_member_limit ('' = no such rule; the
--         engine checked starts < ends)
-- Returns (prelude protocol):
--   ok 201 {id, name, price, stock, sale_starts_at, sale_ends_at, per_member_limit}     created, or this very call resent (same event id)
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
local rules = { sale_starts_ms = ARGV[7], sale_ends_ms = ARGV[8], per_member_limit = ARGV[9] }
for field, value in pairs(rules) do
  if value ~= '' then
    redis.call('HSET', KEYS[1], field, value)
  end
end
local view = product_view(hgetall(KEYS[1]))
outbox(KEYS[2], ARGV[6], 'product.created', 'product:' .. ARGV[1], ARGV[5], {
  product_id = tonumber(ARGV[1]), name = ARGV[2], price = tonumber(ARGV[3]), stock = tonumber(ARGV[4]),
  created_at = ARGV[5], sale_starts_at = view.sale_starts_at, sale_ends_at = view.sale_ends_at,
  per_member_limit = view.per_member_limit,
})
return ok(201, view)
