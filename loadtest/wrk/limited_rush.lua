-- limited_rush.lua: the wrk twin of the goose scenario `limited-rush` (loadtest/src/scenarios.rs).
--
-- Members order one limited product (per_member_limit, sale_starts_at a few seconds into the run) as
-- fast as wrk goes, before and after the opening and far past their limit: 1 unit (2 one time in
-- five), a fresh Idempotency-Key each time, 3 % without a key (refused 400), one time in five the
-- previous request again with the same key (a client retry: the engine replays its first answer);
-- one time in four the next request pays (3 in 4) or cancels (1 in 4) an order this thread was
-- answered 201 for. `LR_BURST` consecutive requests of a thread go to one member, so the thread's
-- connections race for that member's allowance.
--
-- Run by loadtest/limited_rush.sh, which makes the members and the product with
-- `flashsale-loadtest limited-prepare` and checks the outcome with `flashsale-loadtest limited-verify`.
-- Configuration (environment, read by every thread and by done()):
--   LR_MEMBERS     file of `member_id access_token` lines (required)
--   LR_PRODUCT     product id (required)
--   LR_OPEN_MS     sale_starts_at in Unix milliseconds (required): answers are counted before/after it
--   LR_BURST       requests in a row for one member (4)
--   LR_OUT         prefix of the files done() writes (required):
--                    <prefix>.orders  `order_id member_id answered_unix_ms` per 201
--                    <prefix>.counts  `phase<TAB>before|after<TAB>answer<TAB>n`, `late_not_started<TAB>n`,
--                                     `bad_refusal<TAB>n`, `ambiguous<TAB>n` (read by limited-verify)
--                    <prefix>.stats   `key=value` lines: requests, duration, req/s, latency percentiles,
--                                     socket errors (read by the report)
-- wrk cannot tell which request an answer belongs to, so answers are counted by when they arrived and
-- by what they say (status, problem code, the order's status, Idempotent-Replayed).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } lr_timeval;
  int gettimeofday(lr_timeval *tv, void *tz);
]]
local tv = ffi.new("lr_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + math.floor(tonumber(tv.tv_usec) / 1000)
end

local function need(name)
  local v = os.getenv(name)
  if v == nil or v == "" then
    error("limited_rush.lua: set " .. name)
  end
  return v
end

-- ------------------------------------------------------------------------------------------ setup/done

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- ------------------------------------------------------------------------------------- every thread

local ids, tokens, token_of = {}, {}, {}
local product, open_ms, burst
local cursor, sent_for_member = 0, 0
local last = nil          -- the previous order request, for a same-key retry
local pending = {}        -- orders answered 201, to pay or cancel (member id, order id)
local seq = 0

-- what done() collects (globals: thread:get reads them)
counts = {}               -- "before|after\tanswer" -> n
orders = {}               -- "order_id member_id ms" lines
late_not_started = 0
bad_refusal = 0
server_errors = 0

function init(args)
  for line in io.lines(need("LR_MEMBERS")) do
    local id, token = line:match("^(%S+)%s+(%S+)")
    if id then
      table.insert(ids, id)
      table.insert(tokens, "Bearer " .. token)
      token_of[id] = "Bearer " .. token
    end
  end
  if #ids == 0 then
    error("limited_rush.lua: no members in " .. need("LR_MEMBERS"))
  end
  product = need("LR_PRODUCT")
  open_ms = tonumber(need("LR_OPEN_MS"))
  burst = tonumber(os.getenv("LR_BURST") or "4")
  local t = tid or 0
  math.randomseed(now_ms() + t * 7919)
  -- spread the threads over the pool (evenly for up to 8 threads)
  cursor = math.floor(t * #ids / 8) % #ids
end

local function key()
  seq = seq + 1
  return string.format("wrk-%d-%d-%d", tid or 0, seq, math.random(1, 1000000000))
end

local function post(path, token, idem, body)
  local h = { ["Authorization"] = token, ["Content-Type"] = "application/json" }
  if idem then
    h["Idempotency-Key"] = idem
  end
  return wrk.format("POST", path, h, body)
end

function request()
  -- pay or cancel an order this thread got
  if #pending > 0 and math.random() < 0.25 then
    local o = table.remove(pending)
    local action = (math.random() < 0.75) and "pay" or "cancel"
    return post("/api/v1/orders/" .. o.id .. "/" .. action, token_of[o.member], key(), "{}")
  end
  -- the previous order again, same key (a client retry)
  if last and math.random() < 0.2 then
    local l = last
    last = nil
    return post("/api/v1/orders", l.token, l.key, l.body)
  end
  if sent_for_member >= burst then
    sent_for_member = 0
    cursor = (cursor + 1) % #ids
  end
  sent_for_member = sent_for_member + 1
  local token = tokens[cursor + 1]
  local qty = (math.random() < 0.2) and 2 or 1
  local body = '{"items":[{"product_id":' .. product .. ',"quantity":' .. qty .. '}]}'
  if math.random() < 0.03 then
    return post("/api/v1/orders", token, nil, body)
  end
  local k = key()
  last = { token = token, key = k, body = body }
  return post("/api/v1/orders", token, k, body)
end

function response(status, headers, body)
  local now = now_ms()
  local phase = (now < open_ms) and "before" or "after"
  local replayed = headers["Idempotent-Replayed"] or headers["idempotent-replayed"]
  local label
  if status >= 200 and status < 300 then
    label = status .. " " .. (body:match('"status"%s*:%s*"(%u+)"') or "?")
  else
    label = status .. " " .. (body:match('"code"%s*:%s*"([%u_]+)"') or "-")
  end
  if replayed then
    label = label .. " (replayed)"
  end
  local k = phase .. "\t" .. label
  counts[k] = (counts[k] or 0) + 1

  if status == 201 then
    local oid = body:match('"id"%s*:%s*"?(%d+)')
    local mid = body:match('"member_id"%s*:%s*"?(%d+)')
    if oid and mid then
      table.insert(orders, oid .. " " .. mid .. " " .. now)
      if not replayed and #pending < 1000 then
        table.insert(pending, { id = oid, member = mid })
      end
    end
  elseif status >= 500 then
    server_errors = server_errors + 1
  else
    local code = body:match('"code"%s*:%s*"([%u_]+)"')
    if code == "SALE_NOT_STARTED" then
      if not replayed and now > open_ms + 1000 then
        late_not_started = late_not_started + 1
      end
      if not body:find('"sale_starts_at"', 1, true) then
        bad_refusal = bad_refusal + 1
      end
    elseif code == "PURCHASE_LIMIT_EXCEEDED" then
      if not body:match('"remaining_allowance"%s*:%s*%d') then
        bad_refusal = bad_refusal + 1
      end
    end
  end
end

-- ------------------------------------------------------------------------------------------- done

function done(summary, latency, requests)
  local prefix = need("LR_OUT")
  local total = {}
  local late, bad, amb = 0, 0, 0
  local of = assert(io.open(prefix .. ".orders", "w"))
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("counts")) do
      total[k] = (total[k] or 0) + n
    end
    for _, line in ipairs(t:get("orders")) do
      of:write(line, "\n")
    end
    late = late + t:get("late_not_started")
    bad = bad + t:get("bad_refusal")
    amb = amb + t:get("server_errors")
  end
  of:close()
  -- answers lost on the way (read/write errors, timeouts) may have made an order: ambiguous
  local e = summary.errors
  amb = amb + e.read + e.write + e.timeout
  local cf = assert(io.open(prefix .. ".counts", "w"))
  for k, n in pairs(total) do
    cf:write("phase\t", k, "\t", n, "\n")
  end
  cf:write("late_not_started\t", late, "\n")
  cf:write("bad_refusal\t", bad, "\n")
  cf:write("ambiguous\t", amb, "\n")
  cf:close()

  local secs = summary.duration / 1e6
  local sf = assert(io.open(prefix .. ".stats", "w"))
  local function kv(k, v) sf:write(k, "=", tostring(v), "\n") end
  kv("requests", summary.requests)
  kv("duration_s", string.format("%.3f", secs))
  kv("rps", string.format("%.1f", summary.requests / secs))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    kv("p" .. p .. "_ms", string.format("%.3f", latency:percentile(p) / 1000))
  end
  kv("max_ms", string.format("%.3f", latency.max / 1000))
  kv("mean_ms", string.format("%.3f", latency.mean / 1000))
  kv("errors_connect", e.connect)
  kv("errors_read", e.read)
  kv("errors_write", e.write)
  kv("errors_timeout", e.timeout)
  kv("non_2xx_3xx", e.status)
  sf:close()
  io.write(string.format("limited_rush.lua: %d requests in %.1fs (%.0f req/s), p50 %.2f ms, p99 %.2f ms; files %s.{orders,counts,stats}\n",
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000, prefix))
end
