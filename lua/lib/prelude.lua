-- Shared prelude: the engine prepends this file to every script in lua/ before SCRIPT LOAD, so each
-- operation stays ONE atomic script while the reply protocol, idempotency records and outbox appends
-- are written once. Everything here is `local` (Redis 7 forbids script globals).
--
-- Key names in the headers: `{P}` is the hash tag of the owner's partition (src/partition.rs); the
-- engine builds every key and passes it in KEYS (src/scripts/calls.rs names each script's KEYS/ARGV).
--
-- Reply protocol of every HTTP-facing script: { outcome, status, ... }, as few elements as each outcome
-- needs (the engine's RESP decoder pays per element, on every request):
--   { "ok", status, body }        executed; status = HTTP status; body = response JSON
--   { "err", status, code, detail [, ext] }
--                                 refused by a business rule, nothing written but the idempotency
--                                 record; code e.g. COUPON_SOLD_OUT; detail = human text; ext, when
--                                 present, a JSON object of problem extension members (e.g.
--                                 {"remaining_allowance":1}) the engine adds to the problem body
--   { "replay", status, kind, body, detail, ext }
--                                 the idempotency key was seen with the same fingerprint: the stored
--                                 first result (kind "ok" or "problem"), sent back byte for byte
--   { "reused", 422 }             the idempotency key was seen with a different fingerprint

local IDEM = nil       -- idempotency record key of this call, or nil when the request carries none
local IDEM_FP = nil    -- request fingerprint (sha256 of method, path and body, computed by the engine)
local IDEM_TTL = 0     -- seconds to keep the record

local function int(n)
  return string.format('%d', n)
end

-- A JSON text encoded already (a stored order's items, a snapshot that goes into both the event and
-- the reply): json() writes it as it is instead of decoding and encoding it again.
local RAW = {}
local function raw(text)
  return setmetatable({ text = text }, RAW)
end

-- JSON as cjson writes it, except integers, written whole: cjson writes numbers with 14 significant
-- digits at most (`%.14g`, its ceiling), which rounds ids (time-ordered, up to 2^53: 16 digits).
-- Every JSON a script writes (reply bodies, events, stored items) goes through here.
local function json(v)
  local kind = type(v)
  if kind == 'number' then
    if v == math.floor(v) and v > -9007199254740992 and v < 9007199254740992 then
      return string.format('%d', v)
    end
    return cjson.encode(v)
  elseif kind == 'table' then
    if getmetatable(v) == RAW then
      return v.text
    end
    local parts = {}
    if #v > 0 then
      for i = 1, #v do
        parts[i] = json(v[i])
      end
      return '[' .. table.concat(parts, ',') .. ']'
    end
    for k, x in pairs(v) do
      parts[#parts + 1] = cjson.encode(tostring(k)) .. ':' .. json(x)
    end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return cjson.encode(v)
end

-- Redis's clock in ms: every decision against an expiry or validity window uses it, so engines with
-- skewed clocks all agree (issue 8 item 5). Scripts that call TIME are replicated as effects (Redis 7).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- RFC 3339 UTC with milliseconds and `Z` (as the engine's chrono formatter writes it), years 0000-9999.
-- Redis Lua has no os.date: civil-from-days (H. Hinnant's algorithm) on the day count since 1970.
local function rfc3339(ms)
  local secs = math.floor(ms / 1000)
  local milli = ms - secs * 1000
  local days = math.floor(secs / 86400)
  local sod = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day, math.floor(sod / 3600),
    math.floor(sod % 3600 / 60), sod % 60, milli)
end

-- A refusal that writes nothing at all, not even the idempotency record: for a member that does not
-- exist (a stale token after a rebuild), where even the record under the member's keys is a write.
local function refuse_unstored(status, code, detail)
  return { 'err', status, code, detail }
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

-- Returns a reply when the call must not execute (replay or key reuse), nil otherwise.
local function idem_begin(key, fp, ttl)
  if key == nil or key == '' then
    return nil
  end
  IDEM, IDEM_FP, IDEM_TTL = key, fp, tonumber(ttl)
  local rec = redis.call('HMGET', key, 'fp', 'status', 'kind', 'body', 'detail', 'ext')
  if not rec[1] then
    return nil
  end
  if rec[1] ~= fp then
    return { 'reused', 422 }
  end
  return { 'replay', tonumber(rec[2]), rec[3], rec[4], rec[5] or '', rec[6] or '' }
end

local function idem_store(status, kind, body, detail, ext)
  if IDEM then
    redis.call('HSET', IDEM, 'fp', IDEM_FP, 'status', status, 'kind', kind, 'body', body, 'detail', detail,
      'ext', ext or '')
    redis.call('EXPIRE', IDEM, IDEM_TTL)
  end
end

local function ok(status, body_table)
  local body = json(body_table)
  idem_store(status, 'ok', body, '')
  return { 'ok', status, body }
end

-- ext: '' / nil, or the problem's extension members as a JSON object text (stored with the record, so
-- a replay answers them too).
local function fail(status, code, detail, ext)
  idem_store(status, 'problem', code, detail, ext)
  if ext == nil or ext == '' then
    return { 'err', status, code, detail }
  end
  return { 'err', status, code, detail, ext }
end

local function outbox(stream, event_id, event_type, aggregate, at, payload)
  redis.call('XADD', stream, '*', 'event_id', event_id, 'type', event_type, 'aggregate', aggregate,
    'at', at, 'payload', json(payload))
end

local function num_or_null(v)
  if v == nil or v == '' then
    return cjson.null
  end
  return tonumber(v)
end

-- JSON of a number field of a hash (null when absent or not a number), and of a string field (null
-- when absent or empty); escaped by cjson only when it has to be (the fields are our own timestamps
-- and status words).
local function num_field(v)
  local n = tonumber(v)
  if n == nil then
    return 'null'
  end
  return json(n)
end

local function str_field(v)
  if v == nil or v == '' then
    return 'null'
  end
  if string.find(v, '[%c"\\]') then
    return cjson.encode(v)
  end
  return '"' .. v .. '"'
end

-- The order as the API and the events show it, from the order hash, as JSON text (a raw() value, so
-- the event and the reply embed it as it is). One string.format: the generic json() costs ~45 µs of
-- Redis CPU for this object, most of an order_reserve call (issue 12). Its items are stored as the
-- JSON the reserve wrote and go out as they are.
local function order_snapshot(h)
  return raw(string.format(
    '{"id":%s,"member_id":%s,"status":%s,"items":%s,"total_amount":%s,"discount_amount":%s,'
      .. '"paid_amount":%s,"coupon_id":%s,"expires_at":%s,"created_at":%s,"paid_at":%s,"closed_at":%s}',
    num_field(h.id), num_field(h.member_id), str_field(h.status), h.items or '[]', num_field(h.total_amount),
    num_field(h.discount_amount), num_field(h.paid_amount), num_field(h.coupon_id), str_field(h.expires_at),
    str_field(h.created_at), str_field(h.paid_at), str_field(h.closed_at)))
end

-- A product's sale rules live in its hash as sale_starts_ms, sale_ends_ms (Redis-time ms) and
-- per_member_limit; an absent field is an unset rule.
local function ms_or_null(v)
  if v == nil or v == '' or v == false then
    return cjson.null
  end
  return rfc3339(tonumber(v))
end

local function product_view(h)
  return { id = tonumber(h.id), name = h.name, price = tonumber(h.price), stock = tonumber(h.stock),
    sale_starts_at = ms_or_null(h.sale_starts_ms), sale_ends_at = ms_or_null(h.sale_ends_ms),
    per_member_limit = num_or_null(h.per_member_limit) }
end

-- A member's live units of a product go down (a released hold, a returned paid order); a field at 0
-- goes, and never below 0 (units taken before the count existed are not in it).
local function bought_less(key, member, qty)
  local left = redis.call('HINCRBY', key, member, int(-tonumber(qty)))
  if left <= 0 then
    redis.call('HDEL', key, member)
  end
end

-- End of prelude; the operation follows.

-- A member's wallet entry for one coupon (fs:{P}:member:ID:coupons, field = coupon id), as
-- "issued_ms|used_order_id|issue_event_id|issued_at|discount_type|discount_value|valid_from_ms|valid_until_ms"
-- (used_order_id 0 = unused). It carries the coupon's terms, which never change, so paying with the
-- coupon needs the member's slot only.
local function wallet_entry(w)
  return table.concat({ int(w.issued_ms), w.used, w.event_id, w.issued_at, w.discount_type, w.discount_value,
    w.valid_from_ms, w.valid_until_ms }, '|')
end

local function wallet_parse(entry)
  local f = {}
  for part in string.gmatch(entry .. '|', '([^|]*)|') do
    f[#f + 1] = part
  end
  return { issued_ms = tonumber(f[1]), used = f[2], event_id = f[3], issued_at = f[4], discount_type = f[5],
    discount_value = f[6], valid_from_ms = f[7], valid_until_ms = f[8] }
end
