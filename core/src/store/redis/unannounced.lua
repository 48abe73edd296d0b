-- Notes of changes whose events their command may not have published (see `note` in
-- prelude.lua). ARGV: prefix, op, then:
--   list: before (RFC 3339 with nanoseconds), before (Unix ms) -> {key, detail or false, ...}:
--         the notes made at or before it, oldest first (their keys start with their fixed-width
--         time, and `|` sorts before `}`)
--   clear: key, ... -> removes these notes
--
-- `list` first takes over the notes of an older version, which noted only the assignments of
-- commands, in the sorted set `P:unannounced:assigned` (conversation id by assignment time, Unix
-- ms), and which may still run during a rolling upgrade: each one made at or before `before`
-- becomes an `assigned` note if its conversation is still assigned, and is dropped otherwise.

local op = ARGV[2]
local zk, fk = key('unannounced', 'notes'), key('unannounced', 'detail')
if op == 'list' then
  local legacy = key('unannounced', 'assigned')
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', legacy, '-inf', ARGV[4])) do
    local conv = key('conv', id)
    if redis.call('HGET', conv, 'status') == 'assigned' then
      note('assigned', redis.call('HGET', conv, 'assigned_at'), id, false)
    end
    redis.call('ZREM', legacy, id)
  end
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
