-- Balance holds on ONE account, in the account's logical shard: place, capture, void, get.
-- Check and write in this one step (domain/holds.py is the reference these rules agree with).
-- KEYS[1] epoch   KEYS[2] journal stream   KEYS[3] account hash   KEYS[4] hold hash
-- KEYS[5] the shard's expiry index (sorted set: score expires_at ms, member 'account|hold')
-- ARGV[1] expected epoch value   ARGV[2] epoch id (journal)   ARGV[3] op place|capture|void|get
-- ARGV[4] hold id   ARGV[5] account id   ARGV[6] amount_minor (place, capture)
-- ARGV[7] expires_in_ms (place)
-- Returns {'L'} store lost, {'F', len} journal full, or
--   {'K', code, status, account, amount, captured, expires_at, balance, held, replayed, recharge}
--   (status letter o/c/v/x/r; balance and held right after the first application; false: none)
--
-- Account hash field 'hd': the sum of the account's open holds. Available balance is
-- bal - hd + lim: a place must fit in it, and transfer.lua's debits see it too.
-- Expiry is decided here from the server's TIME: an open hold at or past 'exp' is released
-- (journaled 'x') before anything else looks at it, so it can never be captured afterwards.
-- Journal lines: '@h|event|hold|account|amount|currency|code|balance|held|expires_at|ts_ms'
-- (event p placed, c captured, v voided, x expired); a capture also writes an ordinary debit
-- line for its debit 'hc-<29 hex of SHA1(hold id)>' (with the recharge it opened, if any).
redis.replicate_commands()  -- Redis 6.2: replicate effects, so reading TIME may precede writes
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local op, hid, aid, amt_text, ein_text = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]

local f = redis.call('HMGET', KEYS[4], 'a', 'amt', 'ein', 'cur', 'exp', 'st', 'code',
  'pb', 'ph', 'cap', 'cb', 'ch', 'vb', 'vh', 'rc')
local rec = nil
if f[1] then
  rec = {a = f[1], amt = f[2], ein = f[3], cur = f[4], exp = tonumber(f[5]), st = f[6],
         code = tonumber(f[7]), pb = f[8], ph = f[9], cap = f[10], cb = f[11], ch = f[12],
         vb = f[13], vh = f[14], rc = f[15]}
end

local function num(text) return (text and tonumber(text)) or false end
local function bare(code) return {'K', code, false, false, false, false, false, false, false, 0, false} end
local function answer(code, status, bal, held, replayed, rc)
  return {'K', code, status, rec.a, tonumber(rec.amt), num(rec.cap), rec.exp,
          bal, held, replayed, rc or false}
end

if op == 'get' then
  if not rec then return bare(21) end
  local st = rec.st
  if st == 'o' and now >= rec.exp then st = 'x' end  -- due: released on the next touch
  return answer(rec.code, st, false, false, 0)
end

local jlen = redis.call('XLEN', KEYS[2])
if jlen >= @JOURNAL_MAX@ then return {'F', jlen} end

local function valid_amount(text)
  local n = tonumber(text)
  return n ~= nil and n <= @AMOUNT_MAX@ and string.find(text, '^[1-9]%d*$') ~= nil
end
local function fmt(n) return string.format('%d', n) end
local lines = {}
local function hold_line(event, amount, code, bal, held)
  lines[#lines + 1] = '@h|' .. event .. '|' .. hid .. '|' .. rec.a .. '|' .. fmt(amount) .. '|' ..
    rec.cur .. '|' .. code .. '|' .. (bal and fmt(bal) or '') .. '|' ..
    (held and fmt(held) or '') .. '|' .. fmt(rec.exp) .. '|' .. now
end
local function finish(out)
  if #lines > 0 then
    redis.call('XADD', KEYS[2], '*', 'e', ARGV[2], 'd', table.concat(lines, '\n'))
  end
  return out
end
local function account()
  local g = redis.call('HMGET', KEYS[3], 'cur', 'st', 'lim', 'bal', 'hd', 'rt', 'ro')
  if not g[1] then return nil end
  return {cur = g[1], st = g[2], lim = tonumber(g[3]), bal = tonumber(g[4]),
          hd = tonumber(g[5] or '0'), rt = g[6] and tonumber(g[6]), ro = g[7]}
end
-- Release an open hold whose expiry has passed (the expiry's own write, journaled).
local function expire_if_due()
  if rec.st ~= 'o' or now < rec.exp then return end
  local a = account()
  a.hd = a.hd - tonumber(rec.amt)
  redis.call('HSET', KEYS[3], 'hd', fmt(a.hd))
  redis.call('HSET', KEYS[4], 'st', 'x')
  redis.call('ZREM', KEYS[5], rec.a .. '|' .. hid)
  rec.st = 'x'
  hold_line('x', tonumber(rec.amt), 0, a.bal, a.hd)
end

if op == 'place' then
  if rec then
    if rec.a ~= aid or rec.amt ~= amt_text or rec.ein ~= ein_text then return bare(20) end
    local out = answer(rec.code, (rec.code == 0) and 'o' or 'r', num(rec.pb), num(rec.ph), 1)
    out[6] = false  -- the first outcome: nothing was captured then
    return out
  end
  if not valid_amount(amt_text) then return bare(11) end
  local ein = tonumber(ein_text)
  if ein == nil or ein < 1 or ein > @HOLD_EXPIRES_MS_MAX@ or not string.find(ein_text, '^[1-9]%d*$') then
    return redis.error_reply('tally: hold expiry out of range: ' .. ein_text)
  end
  local amt = tonumber(amt_text)
  local a = account()
  local code = 0
  if not a then
    code = 8
  elseif a.st ~= 'a' then
    code = 9
  elseif amt > a.bal - a.hd + a.lim then
    code = 7
  else
    a.hd = a.hd + amt
    redis.call('HSET', KEYS[3], 'hd', fmt(a.hd))
    redis.call('ZADD', KEYS[5], now + ein, aid .. '|' .. hid)
  end
  rec = {a = aid, amt = amt_text, ein = ein_text, cur = (a and a.cur) or '', exp = now + ein,
         st = (code == 0) and 'o' or 'r', code = code}
  local bal, held = (a and a.bal) or false, (a and a.hd) or false
  redis.call('HSET', KEYS[4], 'a', aid, 'amt', amt_text, 'ein', ein_text, 'cur', rec.cur,
    'exp', fmt(rec.exp), 'st', rec.st, 'code', code, 'ts', now)
  if a then
    redis.call('HSET', KEYS[4], 'pb', fmt(bal), 'ph', fmt(held))
    hold_line('p', amt, code, bal, held)
  end
  return finish(answer(code, rec.st, bal, held, 0))
end

if not rec or rec.st == 'r' then return bare(21) end

if op == 'capture' then
  if not valid_amount(amt_text) then return answer(11, rec.st, false, false, 0) end
  if rec.st == 'c' then
    if rec.cap == amt_text then return answer(0, 'c', num(rec.cb), num(rec.ch), 1, rec.rc) end
    return answer(23, 'c', false, false, 0)
  end
  if rec.st == 'v' then return answer(24, 'v', false, false, 0) end
  expire_if_due()
  if rec.st == 'x' then return finish(answer(22, 'x', false, false, 0)) end
  local amt, held_amt = tonumber(amt_text), tonumber(rec.amt)
  if amt > held_amt then return answer(25, rec.st, false, false, 0) end
  local a = account()
  a.bal = a.bal - amt
  a.hd = a.hd - held_amt
  redis.call('HSET', KEYS[3], 'bal', fmt(a.bal), 'hd', fmt(a.hd))
  redis.call('ZREM', KEYS[5], rec.a .. '|' .. hid)
  local capture_id = 'hc-' .. string.sub(redis.sha1hex(hid), 1, 29)
  local debit = capture_id .. '|d|' .. rec.a .. '|' .. amt_text .. '|' .. rec.cur .. '|0|' ..
    fmt(a.bal) .. '|' .. now
  -- Recharge thresholds look at the available balance (as transfer.lua's debits do).
  local rc = false
  if a.rt and not a.ro and a.bal - a.hd < a.rt then
    rc = 'rc-' .. string.sub(redis.sha1hex(capture_id), 1, 29)
    redis.call('HSET', KEYS[3], 'ro', rc)
    debit = debit .. '|' .. rc
  end
  rec.st, rec.cap = 'c', amt_text
  redis.call('HSET', KEYS[4], 'st', 'c', 'cap', amt_text, 'cb', fmt(a.bal), 'ch', fmt(a.hd))
  if rc then redis.call('HSET', KEYS[4], 'rc', rc) end
  hold_line('c', amt, 0, a.bal, a.hd)
  lines[#lines + 1] = debit
  return finish(answer(0, 'c', a.bal, a.hd, 0, rc))
end

if op == 'void' then
  if rec.st == 'v' then return answer(0, 'v', num(rec.vb), num(rec.vh), 1) end
  if rec.st == 'c' then return answer(23, 'c', false, false, 0) end
  expire_if_due()
  if rec.st == 'x' then return finish(answer(22, 'x', false, false, 0)) end
  local a = account()
  a.hd = a.hd - tonumber(rec.amt)
  redis.call('HSET', KEYS[3], 'hd', fmt(a.hd))
  redis.call('ZREM', KEYS[5], rec.a .. '|' .. hid)
  rec.st = 'v'
  redis.call('HSET', KEYS[4], 'st', 'v', 'vb', fmt(a.bal), 'vh', fmt(a.hd))
  hold_line('v', tonumber(rec.amt), 0, a.bal, a.hd)
  return finish(answer(0, 'v', a.bal, a.hd, 0))
end
return redis.error_reply('tally: unknown hold op ' .. op)
