-- Redis Cluster, step 1 of a transfer whose id shard is not its account's shard: reserve the
-- transfer id in ITS shard (one hash tag, one slot). See store/cluster_store.py.
--
-- KEYS[1] epoch of the id shard   KEYS[2] its generation key   KEYS[3] its tx hash, generation 0
-- KEYS[4] its tx hash, generation 1
-- ARGV[1] expected epoch value   ARGV[2] idempotency window in ms (0: records kept forever)
-- ARGV[3] oldest accepted occurred_at age in ms   ARGV[4] furthest accepted future in ms
-- ARGV[5..] 5 per transfer: id, kind (d|c), account id, amount_minor, currency ('' = the
--   account's own), occurred_at ms ('' = now)   -- 6 fields: F below
-- Returns {'L'} store lost, or {'K', then 3 per transfer: code, balance|nil, decided}:
--   decided 0: go on (apply in the account's shard, then finalize); code is 0 and meaningless
--   decided 1: the answer is here (a replay of a final record, a conflict, or the age guard)
--
-- A record here is either FINAL ('k|account|amount|currency|code|balance', the format of
-- transfer.lua, written by finalize.lua or by a rebuild) or PENDING: the same format with the
-- code 99 and no balance, written here. Both parse as records in transfer.lua, so a same-shard
-- call that meets a pending record of another account answers a conflict, never a guess.
redis.replicate_commands()
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local window = tonumber(ARGV[2])
local age_max, skew_max = tonumber(ARGV[3]), tonumber(ARGV[4])
local F = 6
local base = 4
local n = (#ARGV - base) / F
local PENDING = 99

-- Generations: the same turnover as transfer.lua, on this shard's generation key.
local gk, g0, g1 = KEYS[2], KEYS[3], KEYS[4]
local cur, started = 0, nil
local server_ms = nil
local state = redis.call('GET', gk)
if state then
  local c, st = string.match(state, '^([01])|(%d+)$')
  if not c then error('tally: unreadable tx generation ' .. state) end
  cur, started = tonumber(c), tonumber(st)
end
if window > 0 then
  local clock = redis.call('TIME')
  server_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  if not started then
    redis.call('SET', gk, cur .. '|' .. server_ms)
  elseif server_ms - started >= window then
    redis.call('UNLINK', (cur == 0) and g1 or g0)
    cur = 1 - cur
    redis.call('SET', gk, cur .. '|' .. server_ms)
  end
end
local cur_tx = (cur == 0) and g0 or g1
local prev_tx = (cur == 0) and g1 or g0

local function too_old_or_new(occ_text)
  if not server_ms or occ_text == '' then return nil end
  local occ = tonumber(occ_text)
  if occ == nil or not string.find(occ_text, '^%d+$') then return 30 end
  if occ < server_ms - age_max then return 30 end
  if occ > server_ms + skew_max then return 31 end
  return nil
end

local out = {'K'}
local writes = {}
for i = 1, n do
  local o = base + (i - 1) * F
  local tid, kind, aid = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local amt_text, rcur_sent, occ = ARGV[o + 4], ARGV[o + 5], ARGV[o + 6]
  local rec = redis.call('HGET', cur_tx, tid) or redis.call('HGET', prev_tx, tid)
  if rec then
    local rk, racct, ramt, rcur, rcode, rbal =
      string.match(rec, '^(%a)|([^|]+)|(%d+)|(%u*)|(%d+)|(-?%d*)$')
    if not rk then error('tally: unreadable transfer record, refusing to guess: ' .. rec) end
    local code = tonumber(rcode)
    if rk ~= kind then
      out[#out + 1] = 4; out[#out + 1] = false; out[#out + 1] = 1
    elseif racct ~= aid then
      out[#out + 1] = 3; out[#out + 1] = false; out[#out + 1] = 1
    elseif rcur_sent ~= '' and rcur ~= '' and rcur ~= rcur_sent then
      out[#out + 1] = 5; out[#out + 1] = false; out[#out + 1] = 1
    elseif ramt ~= amt_text then
      out[#out + 1] = 2; out[#out + 1] = false; out[#out + 1] = 1
    elseif code == PENDING or (rcur == '' and rcur_sent ~= '') then
      -- Pending (a crash between steps), or a final record that cannot tell this currency
      -- from the account's: the account's shard holds the full record; step 2 answers.
      out[#out + 1] = 0; out[#out + 1] = false; out[#out + 1] = 0
    else
      out[#out + 1] = code; out[#out + 1] = (rbal ~= '' and tonumber(rbal)) or false
      out[#out + 1] = 1
    end
  else
    local refused = too_old_or_new(occ)
    if refused then
      out[#out + 1] = refused; out[#out + 1] = false; out[#out + 1] = 1
    else
      writes[#writes + 1] = tid
      writes[#writes + 1] = kind .. '|' .. aid .. '|' .. amt_text .. '|' .. rcur_sent .. '|' ..
        PENDING .. '|'
      out[#out + 1] = 0; out[#out + 1] = false; out[#out + 1] = 0
    end
  end
end
if #writes > 0 then redis.call('HSET', cur_tx, unpack(writes)) end
return out
