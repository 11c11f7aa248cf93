-- The expiry sweeper of ONE logical shard: releases open holds whose expiry (by the server's
-- TIME) has passed, at most as many as the caller names (it names the index's first members).
-- KEYS[1] epoch   KEYS[2] journal   KEYS[3] expiry index (score expires_at ms, 'account|hold')
-- KEYS[2+2i] account hash, KEYS[3+2i] hold hash of candidate i
-- ARGV[1] expected epoch value   ARGV[2] epoch id   ARGV[2+i] member of candidate i
-- Returns {'L'}, {'F', len}, or {'K', released}
redis.replicate_commands()  -- Redis 6.2: replicate effects, so reading TIME may precede writes
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'L'} end
local jlen = redis.call('XLEN', KEYS[2])
if jlen >= @JOURNAL_MAX@ then return {'F', jlen} end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local lines, released = {}, 0
for i = 1, #ARGV - 2 do
  local member = ARGV[2 + i]
  local akey, hkey = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local score = redis.call('ZSCORE', KEYS[3], member)
  if score and tonumber(score) <= now then
    local h = redis.call('HMGET', hkey, 'a', 'amt', 'cur', 'exp', 'st')
    if h[5] == 'o' and tonumber(h[4]) <= now then
      local g = redis.call('HMGET', akey, 'bal', 'hd')
      local hd = tonumber(g[2] or '0') - tonumber(h[2])
      redis.call('HSET', akey, 'hd', string.format('%d', hd))
      redis.call('HSET', hkey, 'st', 'x')
      local hid = string.sub(member, string.len(h[1]) + 2)
      lines[#lines + 1] = '@h|x|' .. hid .. '|' .. h[1] .. '|' .. h[2] .. '|' .. h[3] .. '|0|' ..
        g[1] .. '|' .. string.format('%d', hd) .. '|' .. h[4] .. '|' .. now
      released = released + 1
    end
    redis.call('ZREM', KEYS[3], member)
  end
end
if #lines > 0 then
  redis.call('XADD', KEYS[2], '*', 'e', ARGV[2], 'd', table.concat(lines, '\n'))
end
return {'K', released}
