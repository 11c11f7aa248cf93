-- Which account a hold id belongs to, in the shard of the HOLD id (ids are deployment-wide,
-- holds live in their account's shard): 'claim' binds a new id to its account first (a later
-- Redis Cluster splits a place into "claim the id in its shard" then "place in the account's
-- shard", both idempotent), 'find' looks it up for capture, void and get.
-- KEYS[1] epoch   KEYS[2] route hash (hold id -> account id)
-- ARGV[1] expected epoch value   ARGV[2] op claim|find   ARGV[3] hold id   ARGV[4] account id
-- Returns {'L'} store lost, or {'K', account id | false}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
if ARGV[2] == 'claim' then
  redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
elseif ARGV[2] ~= 'find' then
  return redis.error_reply('tally: unknown hold route op ' .. ARGV[2])
end
return {'K', redis.call('HGET', KEYS[2], ARGV[3])}
