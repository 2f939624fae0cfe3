-- holds_due: the orphan sweep's read (src/orders.rs): pending holds of one partition whose deadline
-- plus the margin is past by THIS node's clock (the product's node, the one whose stock_release
-- decides). Writes nothing.
-- KEYS[1] pending holds zset    fs:{P}:holds:pending
-- ARGV[1] margin (ms)   ARGV[2] most entries to return
-- Returns the entries (`product:order:member`), oldest deadline first.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
