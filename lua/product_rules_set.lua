-- product_rules_set (admin PATCH): changes a product's sale rules. Each rule is kept, cleared or set;
-- the merged window must still open before it closes. A change appends product.rules_changed with the
-- whole rule set after it; a call that changes nothing writes nothing (a PATCH sent twice is one change).
-- KEYS[1] product hash          fs:{P}:product:ID
-- KEYS[2] product ops zset      fs:{P}:product:ID:ops (recent op ids: a resent call changes nothing)
-- KEYS[3] outbox stream         fs:{P}:outbox (the owner's partition)
-- ARGV[1] sale_starts_ms   ARGV[2] sale_ends_ms   ARGV[3] per_member_limit: each 'keep', '' (clear)
--         or the new value
-- ARGV[4] now (ms)   ARGV[5] now (RFC 3339)   ARGV[6] event id (op id)
-- Returns (prelude protocol):
--   ok 200 {id, name, price, stock, sale_starts_at, sale_ends_at, per_member_limit}
--   err 404 NOT_FOUND                   no such product
--   err 422 VALIDATION_FAILED           the window would close before it opens
-- Event: product.rules_changed
local p = redis.call('HMGET', KEYS[1], 'id', 'sale_starts_ms', 'sale_ends_ms', 'per_member_limit')
if not p[1] then
  return fail(404, 'NOT_FOUND', 'product not found')
end
if redis.call('ZSCORE', KEYS[2], ARGV[6]) then
  return ok(200, product_view(hgetall(KEYS[1])))
end
local function pick(arg, current)
  if arg == 'keep' then
    return current or nil
  end
  if arg == '' then
    return nil
  end
  return arg
end
local starts, ends, limit = pick(ARGV[1], p[2]), pick(ARGV[2], p[3]), pick(ARGV[3], p[4])
if starts and ends and tonumber(ends) <= tonumber(starts) then
  return fail(422, 'VALIDATION_FAILED', 'sale_ends_at: must be after sale_starts_at')
end
if starts == (p[2] or nil) and ends == (p[3] or nil) and limit == (p[4] or nil) then
  return ok(200, product_view(hgetall(KEYS[1])))
end
local fields = { { 'sale_starts_ms', starts }, { 'sale_ends_ms', ends }, { 'per_member_limit', limit } }
for _, f in ipairs(fields) do
  if f[2] then
    redis.call('HSET', KEYS[1], f[1], f[2])
  else
    redis.call('HDEL', KEYS[1], f[1])
  end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(tonumber(ARGV[4]) - 3600000))
local view = product_view(hgetall(KEYS[1]))
outbox(KEYS[3], ARGV[6], 'product.rules_changed', 'product:' .. p[1], ARGV[5], {
  product_id = tonumber(p[1]), sale_starts_at = view.sale_starts_at, sale_ends_at = view.sale_ends_at,
  per_member_limit = view.per_member_limit, changed_at = ARGV[5],
})
return ok(200, view)
