-- transfer. ARGV: prefix, id, now, `pool`|`agent`, target, and for a pool the skills the
-- conversation asks of its next agent from now on (a JSON array; empty: none; `keep`: those it
-- asked before), its priority from now on (a number; empty: the one it had) and the seconds the
-- pool's agents have to accept it (0: assignments are final); for an agent, three placeholders;
-- for `bot` (target: the bot's agent id), the pool whose bot it is and two placeholders.
-- Then the hand-over (JSON) that becomes the conversation's `handover` (empty: it keeps its own).
-- Then optionally a pool and a time (overflow): the transfer is made only if the conversation is
-- queued in that pool since before that time (`queued_at` older), else the conflict
-- `conversation_changed`, and the transfer is noted as `overflowed`.
-- Reply: {'ok', conversation, released agent or nil, the bot that held it or nil} | error.
-- Notes the transfer, with the agent (or bot) it left.

local id, now, kind, target = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ck = key('conv', id)
local st = redis.call('HGET', ck, 'status')
if not st then
  return not_found('conversation', id)
end
if ARGV[10] then
  local c = redis.call('HMGET', ck, 'pool', 'queued_at')
  if st ~= 'queued' or c[1] ~= ARGV[10] or not c[2] or not lt(c[2], ARGV[11]) then
    return conflict('conversation_changed', 'conversation `' .. id
      .. '` does not wait in pool `' .. ARGV[10] .. '` since before ' .. ARGV[11])
  end
end
if st == 'closed' then
  return conflict('conversation_closed', 'conversation `' .. id .. '` is closed')
end
local released_bot = bot_holder(id, st)
if kind == 'bot' and released_bot == target then
  return conflict('already_assigned', 'conversation `' .. id .. '` is already with `' .. target .. '`')
end
if kind == 'agent' then
  local a = redis.call('HMGET', key('agent', target), 'status', 'capacity')
  if not a[1] then
    return not_found('agent', target)
  end
  local convs = key('agent-convs', target)
  if redis.call('LPOS', convs, id) then
    return conflict('already_assigned',
      'conversation `' .. id .. '` is already with agent `' .. target .. '`')
  end
  if a[1] == 'offline' or presence_lapsed(target)
    or redis.call('LLEN', convs) >= (tonumber(a[2]) or 0) then
    return conflict('agent_unavailable', 'agent `' .. target .. '` is offline or at capacity')
  end
end

local released = detach(id)
local noted = kind == 'pool' and 'transferred_to_pool' or 'transferred_to_agent'
if ARGV[10] then
  noted = 'overflowed'
end
note(noted, now, id, released or released_bot)
if ARGV[9] ~= '' then
  redis.call('HSET', ck, 'handover', ARGV[9])
end
if kind == 'pool' then
  if ARGV[6] == '' then
    redis.call('HDEL', ck, 'skills')
  elseif ARGV[6] ~= 'keep' then
    redis.call('HSET', ck, 'skills', ARGV[6])
  end
  local priority = tonumber(ARGV[7])
  if priority == 0 then
    redis.call('HDEL', ck, 'priority')
  elseif priority then
    redis.call('HSET', ck, 'priority', priority)
  end
  if (tonumber(ARGV[8]) or 0) > 0 then
    redis.call('HSET', ck, 'offer_secs', ARGV[8])
  else
    redis.call('HDEL', ck, 'offer_secs')
  end
  local c = redis.call('HMGET', ck, 'priority', 'skills')
  enqueue(id, target, queue_sig(c[1], c[2] or nil))
  redis.call('HSET', ck, 'status', 'queued', 'pool', target, 'queued_at', now, 'updated_at', now)
  redis.call('HDEL', ck, 'agent_id')
elseif kind == 'bot' then
  redis.call('HDEL', ck, 'offer_secs')
  redis.call('HSET', ck, 'status', 'bot', 'pool', ARGV[6], 'agent_id', target, 'updated_at', now)
  bot_touch(id, now)
else
  take_conversation(target, id, now)
  redis.call('HSET', ck, 'status', 'assigned', 'agent_id', target, 'assigned_at', now,
    'assigned_by', 'transfer', 'updated_at', now)
end
return { 'ok', conv_reply(id), released and agent_reply(released) or false,
  released_bot or false }
