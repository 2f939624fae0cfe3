-- sold_out_rush.lua: the wrk side of loadtest/sold_out.sh, a coupon rush or a stock rush that sells out
-- part way through the run, so one run has a phase before the sell-out and a phase after it.
--
--   coupon  POST /api/v1/coupons/{SO_ITEM}/issue, no Idempotency-Key (optional there), members in turn
--   stock   POST /api/v1/orders, one unit of product SO_ITEM, a fresh Idempotency-Key each (required)
--
-- Run with ONE connection per thread (wrk -tN -cN): a thread's requests then go one after another on
-- its connection, so the time from request() to response() is that request's latency, and every
-- answer can be written down with its own latency (wrk itself reports only the whole run's).
-- done() writes <SO_OUT>.answers, one line per answer, `answered_unix_ms latency_us answer`, where
-- answer is 201, sold_out (COUPON_SOLD_OUT / OUT_OF_STOCK), already (COUPON_ALREADY_ISSUED) or the
-- status; loadtest/sold_out_report.py splits them at the sell-out (the first sold_out answer).
--
-- Environment: SO_SCENARIO coupon|stock, SO_ITEM (coupon or product id), SO_MEMBERS (file of
-- `member_id access_token` lines), SO_OUT (prefix of the files written), SO_RUN (makes keys unique).
--
-- Light on purpose: wrk shares the two cores with the engine and Redis, so what it spends per request
-- is taken from them. Each member's request is formatted once in init() (the stock rush's only
-- changing part, the Idempotency-Key's counter, is put between two prepared halves), and an answer is
-- kept as three numbers, turned into text only in done().

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

-- Where the stock rush's Idempotency-Key counter goes in a prepared request.
local KEY_SLOT = "\1KEY\1"

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local tokens = {}
local scenario, item, run
local cursor, n, sent_us = 0, 0, 0
-- this thread's answers, three numbers each: answered_unix_ms, latency_us, answer code (the status,
-- or SOLD_OUT / ALREADY); a global: done() reads it with thread:get
answers = {}
local SOLD_OUT, ALREADY = 1, 2
local path, body
-- per member: the whole request (coupon), or the parts before and after the key's counter (stock)
local prepared, prepared_tail = {}, {}

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
    }
    if scenario == "stock" then
      headers["Idempotency-Key"] = "so-" .. run .. "-" .. tid .. "-" .. KEY_SLOT
    end
    local whole = wrk.format("POST", path, headers, body)
    if scenario == "stock" then
      local at = whole:find(KEY_SLOT, 1, true)
      prepared[i], prepared_tail[i] = whole:sub(1, at - 1), whole:sub(at + #KEY_SLOT)
    else
      prepared[i] = whole
    end
  end
end

function request()
  cursor = cursor % #tokens + 1
  n = n + 1
  sent_us = now_us()
  if scenario == "stock" then
    return prepared[cursor] .. n .. prepared_tail[cursor]
  end
  return prepared[cursor]
end

function response(status, headers, body)
  local t = now_us()
  local answer = status
  if status == 409 then
    if body:find('"COUPON_SOLD_OUT"', 1, true) or body:find('"OUT_OF_STOCK"', 1, true) then
      answer = SOLD_OUT
    elseif body:find('"COUPON_ALREADY_ISSUED"', 1, true) then
      answer = ALREADY
    end
  end
  local k = #answers
  answers[k + 1], answers[k + 2], answers[k + 3] = math.floor(t / 1000), t - sent_us, answer
end

local answer_names = { [SOLD_OUT] = "sold_out", [ALREADY] = "already" }

function done(summary, latency, requests)
  local f = assert(io.open(need("SO_OUT") .. ".answers", "w"))
  for _, t in ipairs(threads) do
    local a = t:get("answers")
    for k = 1, #a, 3 do
      f:write(string.format("%d %d %s\n", a[k], a[k + 1], answer_names[a[k + 2]] or tostring(a[k + 2])))
    end
  end
  f:close()
  io.write(string.format("wrk: %d requests in %.2f s, %d socket errors\n", summary.requests,
    summary.duration / 1e6, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
