-- Notes of assignments not announced yet (Store::assign_queued_noted), in the sorted set
-- `P:unannounced:assigned` (conversation id by assignment time, Unix ms). ARGV: prefix, op, then:
--   list: before (ms) -> {'ok', conversations}: those noted at or before it that are still
--         assigned, oldest first; the notes of conversations no longer assigned are dropped
--   clear: conversation id, ... -> removes their notes

local op, zk = ARGV[2], key('unannounced', 'assigned')
if op == 'list' then
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zk, '-inf', ARGV[3])) do
    if redis.call('HGET', key('conv', id), 'status') == 'assigned' then
      out[#out + 1] = conv_reply(id)
    else
      redis.call('ZREM', zk, id)
    end
  end
  return { 'ok', out }
elseif op == 'clear' then
  for n = 3, #ARGV do
    redis.call('ZREM', zk, ARGV[n])
  end
  return 1
end
return redis.error_reply('unknown unannounced operation `' .. tostring(op) .. '`')
