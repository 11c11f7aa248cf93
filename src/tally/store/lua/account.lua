-- Create or update an account's definition (never its balance). Accounts are written to the
-- SQL ledger first; this mirrors them into the store.
-- KEYS[1] epoch   KEYS[2] account hash
-- ARGV[1] expected epoch value   ARGV[2] currency   ARGV[3] status letter   ARGV[4] credit limit
-- Returns {'L'} store lost, {'K', code}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local cur = redis.call('HGET', KEYS[2], 'cur')
if cur and cur ~= ARGV[2] then return {'K', 10} end
if not cur then redis.call('HSET', KEYS[2], 'cur', ARGV[2], 'bal', '0') end
redis.call('HSET', KEYS[2], 'st', ARGV[3], 'lim', ARGV[4])
return {'K', 0}
