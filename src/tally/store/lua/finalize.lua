-- Redis Cluster, step 3: replace pending reservations (reserve.lua) by final records, in the
-- transfer id's shard, once the account's shard decided (transfer.lua). Idempotent: a final
-- record already there is left alone; a record of '' drops a pending reservation (the transfer
-- was refused before any record: nothing to keep, as transfer.lua writes none).
--
-- KEYS[1] epoch of the id shard   KEYS[2] its generation key   KEYS[3] tx hash, generation 0
-- KEYS[4] tx hash, generation 1
-- ARGV[1] expected epoch value   ARGV[2..] pairs: transfer id, final record ('' = drop)
-- Returns {'L'} store lost, or {'K', finalized count}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local cur = 0
local state = redis.call('GET', KEYS[2])
if state then
  local c = string.match(state, '^([01])|%d+$')
  if not c then error('tally: unreadable tx generation ' .. state) end
  cur = tonumber(c)
end
local cur_tx = (cur == 0) and KEYS[3] or KEYS[4]
local prev_tx = (cur == 0) and KEYS[4] or KEYS[3]
local done = 0
for i = 2, #ARGV, 2 do
  local tid, final = ARGV[i], ARGV[i + 1]
  local where, rec = cur_tx, redis.call('HGET', cur_tx, tid)
  if not rec then where, rec = prev_tx, redis.call('HGET', prev_tx, tid) end
  if rec and string.match(rec, '^%a|[^|]+|%d+|%u*|99|$') then
    if final == '' then
      redis.call('HDEL', where, tid)
    else
      redis.call('HSET', where, tid, final)
    end
    done = done + 1
  end
end
return {'K', done}
