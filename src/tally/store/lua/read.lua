-- Read accounts of one shard, only from a dataset with the expected epoch (an empty or foreign
-- dataset must never answer "balance 0").
-- KEYS[1] epoch   KEYS[2..] account hashes     ARGV[1] expected epoch value
-- Returns {'L'} or {'K', cur, st, lim, bal, hd, ...} (nil fields for a missing account; hd, the
-- open holds' sum, is nil for an account that never had a hold)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local out = {'K'}
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'cur', 'st', 'lim', 'bal', 'hd')
  out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = f[3]; out[#out + 1] = f[4]
  out[#out + 1] = f[5]
end
return out
