-- coupon_refused.lua: the wrk side of loadtest/engine_cpu.sh. POST /api/v1/coupons/{CPU_COUPON}/issue
-- for members in turn (tokens from CPU_MEMBERS, `member_id access_token` lines). The coupon is sold
-- out before the run and the engine runs without sold-out markers, so every request is one EVALSHA
-- that Redis refuses: the engine's cost of a request that reaches Redis, nothing else. Counts the
-- answers by status; anything but 409 is reported (the run is then not what it claims to measure).

local tokens = {}
local path
local cursor = 0
statuses = {}
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = "/api/v1/coupons/" .. (assert(os.getenv("CPU_COUPON"), "set CPU_COUPON")) .. "/issue"
  for line in io.lines((assert(os.getenv("CPU_MEMBERS"), "set CPU_MEMBERS"))) do
    local _, token = line:match("^(%S+)%s+(%S+)$")
    if token then
      table.insert(tokens, token)
    end
  end
  assert(#tokens > 0, "coupon_refused.lua: no members")
  cursor = (tid * 7919) % #tokens
end

function request()
  cursor = cursor % #tokens + 1
  return wrk.format("POST", path, { ["Authorization"] = "Bearer " .. tokens[cursor] }, "")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, status .. "=" .. n)
  end
  table.sort(parts)
  io.write("answers: " .. table.concat(parts, " ") .. "\n")
  io.write(string.format("total: %d %.3f %.3f\n", summary.requests, summary.duration / 1e6,
    latency:percentile(99) / 1000))
end
