-- Auto-recharge markers in an account hash (the SQL ledger is their source of truth).
-- KEYS[1] epoch   KEYS[2] account hash
-- ARGV[1] expected epoch value   ARGV[2] op   ARGV[3] value
--   op 'rule':  ARGV[3] threshold minor ('rt'), or '' to turn autopay off (deletes 'rt')
--   op 'close': ARGV[3] recharge id; deletes 'ro' only if it names this recharge
--   op 'open':  ARGV[3] recharge id; sets 'ro' unless another recharge is open (restores a
--               marker the ledger knows about, e.g. after a rebuild)
-- Returns {'L'} store lost, {'K', code, ro|false}: code 0 done, 1 nothing to do, 8 no account
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
if redis.call('HEXISTS', KEYS[2], 'cur') == 0 then return {'K', 8, false} end
local op, value = ARGV[2], ARGV[3]
local ro = redis.call('HGET', KEYS[2], 'ro')
if op == 'rule' then
  if value == '' then
    redis.call('HDEL', KEYS[2], 'rt')
  else
    redis.call('HSET', KEYS[2], 'rt', value)
  end
  return {'K', 0, ro}
elseif op == 'close' then
  if ro == value then
    redis.call('HDEL', KEYS[2], 'ro')
    return {'K', 0, false}
  end
  return {'K', 1, ro}
elseif op == 'open' then
  if ro then return {'K', (ro == value) and 1 or 3, ro} end
  redis.call('HSET', KEYS[2], 'ro', value)
  return {'K', 0, value}
end
return redis.error_reply('tally: unknown recharge op ' .. op)
