-- close_conversation. ARGV: prefix, id, reason, now, and optionally a time: then the
-- conversation closes only if it is queued or assigned and unchanged since before that time
-- (`updated_at` older), else the conflict `conversation_changed` (close_idle).
-- Reply: {'ok', conversation, released agent or nil, the bot that held it or nil} | error.
-- Notes the close, with the agent (or bot) it left.

local id = ARGV[2]
if ARGV[5] then
  local c = redis.call('HMGET', key('conv', id), 'status', 'updated_at')
  if not c[1] then
    return not_found('conversation', id)
  end
  if (c[1] ~= 'queued' and c[1] ~= 'assigned') or not c[2] or not lt(c[2], ARGV[5]) then
    return conflict('conversation_changed',
      'conversation `' .. id .. '` is not open or changed since ' .. ARGV[5])
  end
end
local released, err, bot = close_conversation(id, ARGV[3], ARGV[4])
if err then
  return err
end
note('closed', ARGV[4], id, released or bot)
return { 'ok', conv_reply(id), released and agent_reply(released) or false, bot or false }
