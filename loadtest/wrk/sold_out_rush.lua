-- sold_out_rush.lua: the wrk side of loadtest/sold_out.sh, a coupon rush or a stock rush that sells out
-- part way through the run, so one run has a phase before the sell-out and a phase after it.
--
--   coupon  POST /api/v1/coupons/{SO_ITEM}/issue, no Idempotency-Key (optional there), members in turn
--   stock   POST /api/v1/orders, one unit of product SO_ITEM, a fresh Idempotency-Key each (required)
--
-- Every request carries `X-Request-Id: <n>` (the thread's request counter) and the engine echoes it on
-- the answer, so with several connections per thread (wrk -t2 -c16: few threads, each waking for
-- several answers at once, light on the two cores it shares) every answer is still paired with its
-- request and timed, which wrk itself does not report (only the whole run's latency).
-- done() writes <SO_OUT>.answers, one line per answer, `answered_unix_ms latency_us answer`, where
-- answer is 201, sold_out (COUPON_SOLD_OUT / OUT_OF_STOCK), already (COUPON_ALREADY_ISSUED) or the
-- status; loadtest/sold_out_report.py splits them at the sell-out (the first sold_out answer). An
-- answer without its id (an engine that does not echo it) is counted as unpaired and fails the run.
--
-- Environment: SO_SCENARIO coupon|stock, SO_ITEM (coupon or product id), SO_MEMBERS (file of
-- `member_id access_token` lines), SO_OUT (prefix of the files written), SO_RUN (makes keys unique).
--
-- Light on purpose: wrk shares the two cores with the engine and Redis, so what it spends per request
-- is taken from them. Each member's request is formatted once in init() (the changing part, the
-- request counter in X-Request-Id and in the stock rush's Idempotency-Key, goes between prepared
-- pieces), and an answer is kept as three numbers, turned into text only in done().

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } so_timeval;
  int gettimeofday(so_timeval *tv, void *tz);
]]
local tv = ffi.new("so_timeval")
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local function need(name)
  local v = os.getenv(name)
  if v == nil or v == "" then
    error("sold_out_rush.lua: set " .. name)
  end
  return v
end

-- Where the request counter goes in a prepared request.
local ID_SLOT = "\1ID\1"
-- Send times by request counter, a ring: a thread has at most its connections' count in flight.
local RING = 4096

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local tokens = {}
local scenario, item, run
local cursor, n = 0, 0
local sent_us = {}
-- this thread's answers, three numbers each: answered_unix_ms, latency_us, answer code (the status,
-- or SOLD_OUT / ALREADY), and how many came back without their request's id; globals: done() reads
-- them with thread:get
answers = {}
unpaired = 0
local SOLD_OUT, ALREADY = 1, 2
local path, body
-- per member: the request's pieces around the counter (two for coupon, three for stock)
local prepared = {}

function init(args)
  scenario = need("SO_SCENARIO")
  item = need("SO_ITEM")
  run = need("SO_RUN")
  for line in io.lines(need("SO_MEMBERS")) do
    local _, token = line:match("^(%S+)%s+(%S+)$")
    if token then
      table.insert(tokens, token)
    end
  end
  assert(#tokens > 0, "sold_out_rush.lua: no members in SO_MEMBERS")
  -- threads start apart in the member list, so they do not ask for the same member at once
  cursor = (tid * 7919) % #tokens
  if scenario == "coupon" then
    path, body = "/api/v1/coupons/" .. item .. "/issue", ""
  elseif scenario == "stock" then
    path, body = "/api/v1/orders", '{"items":[{"product_id":' .. item .. ',"quantity":1}]}'
  else
    error("sold_out_rush.lua: SO_SCENARIO is coupon or stock")
  end
  for i, token in ipairs(tokens) do
    local headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
      ["X-Request-Id"] = ID_SLOT,
    }
    if scenario == "stock" then
      headers["Idempotency-Key"] = "so-" .. run .. "-" .. tid .. "-" .. ID_SLOT
    end
    local whole, pieces, from = wrk.format("POST", path, headers, body), {}, 1
    while true do
      local at = whole:find(ID_SLOT, from, true)
      if not at then
        break
      end
      table.insert(pieces, whole:sub(from, at - 1))
      from = at + #ID_SLOT
    end
    table.insert(pieces, whole:sub(from))
    prepared[i] = pieces
  end
end

function request()
  cursor = cursor % #tokens + 1
  n = n + 1
  sent_us[n % RING] = now_us()
  local p = prepared[cursor]
  if p[3] then
    return p[1] .. n .. p[2] .. n .. p[3]
  end
  return p[1] .. n .. p[2]
end

function response(status, headers, body)
  local t = now_us()
  local id = tonumber(headers["x-request-id"])
  local latency = 0
  if id then
    latency = t - sent_us[id % RING]
  else
    unpaired = unpaired + 1
  end
  local answer = status
  if status == 409 then
    if body:find('"COUPON_SOLD_OUT"', 1, true) or body:find('"OUT_OF_STOCK"', 1, true) then
      answer = SOLD_OUT
    elseif body:find('"COUPON_ALREADY_ISSUED"', 1, true) then
      answer = ALREADY
    end
  end
  local k = #answers
  answers[k + 1], answers[k + 2], answers[k + 3] = math.floor(t / 1000), latency, answer
end

local answer_names = { [SOLD_OUT] = "sold_out", [ALREADY] = "already" }

function done(summary, latency, requests)
  local f = assert(io.open(need("SO_OUT") .. ".answers", "w"))
  local unpaired_total = 0
  for _, t in ipairs(threads) do
    unpaired_total = unpaired_total + t:get("unpaired")
    local a = t:get("answers")
    for k = 1, #a, 3 do
      f:write(string.format("%d %d %s\n", a[k], a[k + 1], answer_names[a[k + 2]] or tostring(a[k + 2])))
    end
  end
  f:close()
  io.write(string.format("wrk: %d requests in %.2f s, %d socket errors, %d unpaired answers\n",
    summary.requests, summary.duration / 1e6, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, unpaired_total))
end
