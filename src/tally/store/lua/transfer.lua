-- Apply a batch of debits and credits to the accounts of ONE logical shard, atomically.
-- Check and write happen here, in one step; Python never reads-decides-writes.
--
-- KEYS[1] epoch   KEYS[2] journal stream   KEYS[3..2+3t] per transfer-id shard (ids are unique
--   deployment-wide, so a record lives in the shard of its id): its generation key, its tx
--   hash of generation 0, its tx hash of generation 1   KEYS[3+3t..2+3t+m] account hashes
-- ARGV[1] expected epoch value   ARGV[2] epoch id (journal)   ARGV[3] now_ms   ARGV[4] t
-- ARGV[5] m   ARGV[6] idempotency window in ms (0: records are kept forever)
-- ARGV[7] oldest accepted occurred_at age in ms   ARGV[8] furthest accepted future in ms
--   (both from domain.limits.occurred_bounds_ms; unused when the window is 0)
-- ARGV[9..8+m] account ids, then 7 per transfer: id, kind (d|c), account index 1..m,
--   amount_minor, currency ('' = the account's own currency), tx shard index 1..t,
--   occurred_at ms ('' = now by the server's clock)
-- Returns {'L'} store lost, {'F', len} journal full, or {'K', code, balance|nil, replayed, ...}
--   followed by a pair (transfer index, recharge id) per recharge this call opened.
--
-- Idempotency window: a tx shard's records live in two generations (hashes dropped whole, not
-- per-id TTLs). The generation key holds '<current 0|1>|<started ms>' by the SERVER's clock.
-- When the current generation is a window old, the previous one is dropped (UNLINK: freed in
-- the background) and becomes the new current one. A record is written to the current
-- generation, so it is dropped no sooner than one window after it was written: every replay
-- inside the window finds it. Lookups read both generations.
-- Age guard: an id WITHOUT a record whose occurred_at is older than ARGV[7] or more than ARGV[8]
-- ahead, by the same server clock, is refused (codes 30 / 31): nothing written, no record, no
-- journal line. ARGV[7] < window - ARGV[8], so every id accepted now, if it was ever applied,
-- was applied less than a window ago and its record is still here (README). The record is
-- looked up FIRST: an exact replay returns the first outcome whatever its occurred_at.
--
-- Auto-recharge: an account hash with 'rt' (threshold, present while autopay is on) and no 'ro'
-- (open recharge id) opens one recharge when a debit (ok or insufficient_funds) leaves the
-- balance below the threshold: 'ro' is set HERE, in the same step as the debit, so no second
-- recharge can open while this one is open. The id is derived from the debit's transfer id
-- ('rc-' + 29 hex of its SHA1) and appended as a 9th field to that debit's journal line.
redis.replicate_commands()  -- Redis 6.2: replicate effects, so reading TIME may precede writes
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local jlen = redis.call('XLEN', KEYS[2])
if jlen >= @JOURNAL_MAX@ then return {'F', jlen} end

local t = tonumber(ARGV[4])
local m = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local age_max, skew_max = tonumber(ARGV[7]), tonumber(ARGV[8])
local F = 7  -- fields per transfer
local base = 8 + m
local n = (#ARGV - base) / F
local CHUNK = 500

-- The generations of each tx shard this call touches; rotates those a window old. Rotation is
-- housekeeping that any later call would do as well, so it may precede the checks below.
local cur_tx, prev_tx = {}, {}
local server_ms = nil
if window > 0 then
  local clock = redis.call('TIME')
  server_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
for x = 1, t do
  local gk, g0, g1 = KEYS[3 * x], KEYS[3 * x + 1], KEYS[3 * x + 2]
  local cur, started = 0, nil
  local state = redis.call('GET', gk)
  if state then
    local c, st = string.match(state, '^([01])|(%d+)$')
    if not c then error('tally: unreadable tx generation ' .. state) end
    cur, started = tonumber(c), tonumber(st)
  end
  if server_ms then
    if not started then
      redis.call('SET', gk, cur .. '|' .. server_ms)
    elseif server_ms - started >= window then
      redis.call('UNLINK', (cur == 0) and g1 or g0)
      cur = 1 - cur
      redis.call('SET', gk, cur .. '|' .. server_ms)
    end
  end
  cur_tx[x] = (cur == 0) and g0 or g1
  prev_tx[x] = (cur == 0) and g1 or g0
end

local groups = {}
for i = 1, n do
  local x = tonumber(ARGV[base + (i - 1) * F + 6])
  local g = groups[x]
  if not g then g = {}; groups[x] = g end
  g[#g + 1] = i
end
local prior = {}
for x, g in pairs(groups) do
  for s = 1, #g, CHUNK do
    local ids = {}
    for j = s, math.min(s + CHUNK - 1, #g) do ids[#ids + 1] = ARGV[base + (g[j] - 1) * F + 1] end
    local got = redis.call('HMGET', cur_tx[x], unpack(ids))
    local missing, at = {}, {}
    for j = 1, #got do
      if got[j] then
        prior[g[s + j - 1]] = got[j]
      else
        missing[#missing + 1] = ids[j]; at[#at + 1] = g[s + j - 1]
      end
    end
    if #missing > 0 then
      local older = redis.call('HMGET', prev_tx[x], unpack(missing))
      for j = 1, #older do if older[j] then prior[at[j]] = older[j] end end
    end
  end
end

local acc = {}
local function load(ai)
  local a = acc[ai]
  if a == nil then
    local f = redis.call('HMGET', KEYS[2 + 3 * t + ai], 'cur', 'st', 'lim', 'bal', 'rt', 'ro', 'hd')
    if f[1] then
      a = {cur = f[1], st = f[2], lim = tonumber(f[3]), bal = tonumber(f[4]), dirty = false,
           rt = f[5] and tonumber(f[5]), ro = f[6],
           hd = tonumber(f[7] or '0')}  -- holds: open holds' sum (hold.lua), 0 without any
    else
      a = false
    end
    acc[ai] = a
  end
  return a
end

local function replay(rec, kind, aid, amt, cur)
  local rk, racct, ramt, rcur, rcode, rbal =
    string.match(rec, '^(%a)|([^|]+)|(%d+)|(%u*)|(%d+)|(-?%d*)$')
  -- Nothing is written before the loop ends, so failing here leaves the dataset untouched.
  if not rk then error('tally: unreadable transfer record, refusing to guess: ' .. rec) end
  if rk ~= kind then return 4, false end
  if racct ~= aid then return 3, false end
  if cur ~= '' and rcur ~= cur then return 5, false end
  if tonumber(ramt) ~= amt then return 2, false end
  return tonumber(rcode), (rbal ~= '' and tonumber(rbal)) or false
end

-- The age guard (domain.rules.occurred_guard): nil when the transfer may be decided.
local function too_old_or_new(occ_text)
  if not server_ms or occ_text == '' then return nil end
  local occ = tonumber(occ_text)
  if occ == nil or not string.find(occ_text, '^%d+$') then return 30 end
  if occ < server_ms - age_max then return 30 end
  if occ > server_ms + skew_max then return 31 end
  return nil
end

local function apply(a, kind, amt, amt_text, cur)
  if not a then return 8 end
  if cur ~= '' and a.cur ~= cur then return 10 end
  -- canonical integer text only ("1.0", "007", "1e3" refused): it is stored as sent
  if amt == nil or amt > @AMOUNT_MAX@ or not string.find(amt_text, '^[1-9]%d*$') then return 11 end
  if kind == 'd' then
    if a.st ~= 'a' then return 9 end
    -- holds: a debit sees the AVAILABLE balance, bal - hd + lim (held money is spoken for)
    if a.bal - a.hd - amt < -a.lim then return 7 end
    a.bal = a.bal - amt
  else
    if a.st == 'c' then return 9 end
    if a.bal + amt > @BALANCE_MAX@ then return 12 end
    a.bal = a.bal + amt
  end
  a.dirty = true
  return 0
end

local out = {'K'}
local recs, lines, seen, opened = {}, {}, {}, {}
for i = 1, n do
  local o = base + (i - 1) * F
  local tid, kind, ai = ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3])
  local amt_text, cur, x = ARGV[o + 4], ARGV[o + 5], tonumber(ARGV[o + 6])
  local amt = tonumber(amt_text)
  local aid = ARGV[8 + ai]
  local rec = seen[tid] or prior[i]
  if rec then
    local code, bal = replay(rec, kind, aid, amt, cur)
    out[#out + 1] = code; out[#out + 1] = bal; out[#out + 1] = 1
  else
    local a = load(ai)
    local code = too_old_or_new(ARGV[o + 7]) or apply(a, kind, amt, amt_text, cur)
    local bal = a and a.bal or false
    out[#out + 1] = code; out[#out + 1] = bal; out[#out + 1] = 0
    if code ~= 11 and code ~= 30 and code ~= 31 then
      -- The currency as SENT ('' = the account's own): a replay compares with what the client
      -- sent, so a refused currency_mismatch replays as itself, and the ledger records it so.
      local rc = (cur ~= '' and cur) or (a and a.cur) or ''
      local r = kind .. '|' .. aid .. '|' .. amt_text .. '|' ..
        rc .. '|' .. code .. '|' .. (bal and string.format('%d', bal) or '')
      seen[tid] = r
      local rx = recs[x]
      if not rx then rx = {}; recs[x] = rx end
      rx[#rx + 1] = tid; rx[#rx + 1] = r
      local line = tid .. '|' .. r .. '|' .. ARGV[3]
      if a and a.rt and not a.ro and kind == 'd' and (code == 0 or code == 7) and a.bal - a.hd < a.rt then  -- holds: available
        a.ro = 'rc-' .. string.sub(redis.sha1hex(tid), 1, 29)
        a.opened = true
        opened[#opened + 1] = i; opened[#opened + 1] = a.ro
        line = line .. '|' .. a.ro
      end
      lines[#lines + 1] = line
    end
  end
end

for ai, a in pairs(acc) do
  if a and a.dirty then
    redis.call('HSET', KEYS[2 + 3 * t + ai], 'bal', string.format('%d', a.bal))
  end
  if a and a.opened then redis.call('HSET', KEYS[2 + 3 * t + ai], 'ro', a.ro) end
end
for x, rx in pairs(recs) do
  for s = 1, #rx, 2 * CHUNK do
    redis.call('HSET', cur_tx[x], unpack(rx, s, math.min(s + 2 * CHUNK - 1, #rx)))
  end
end
if #lines > 0 then
  redis.call('XADD', KEYS[2], '*', 'e', ARGV[2], 'd', table.concat(lines, '\n'))
end
for j = 1, #opened do out[#out + 1] = opened[j] end
return out
