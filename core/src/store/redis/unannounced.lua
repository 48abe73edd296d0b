-- Notes of changes whose events their command may not have published (see `note` in
-- prelude.lua). ARGV: prefix, op, then:
--   list: before (RFC 3339 with nanoseconds) -> {key, detail or false, ...}: the notes made
--         at or before it, oldest first (their keys start with their fixed-width time, and `|`
--         sorts before `}`)
--   clear: key, ... -> removes these notes

local op = ARGV[2]
local zk, fk = key('unannounced', 'notes'), key('unannounced', 'detail')
if op == 'list' then
  local out = {}
  for _, member in ipairs(redis.call('ZRANGEBYLEX', zk, '-', '(' .. ARGV[3] .. '}')) do
    out[#out + 1] = member
    out[#out + 1] = redis.call('HGET', fk, member)
  end
  return out
elseif op == 'clear' then
  for n = 3, #ARGV do
    redis.call('ZREM', zk, ARGV[n])
    redis.call('HDEL', fk, ARGV[n])
  end
  return 1
end
return redis.error_reply('unknown unannounced operation `' .. tostring(op) .. '`')
