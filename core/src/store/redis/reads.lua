-- Pure reads, one consistent snapshot each. ARGV: prefix, operation, argument.

local op, arg = ARGV[2], ARGV[3]

-- An agent whose tracked presence lapsed reads as offline (the next write expires it).
local function agent_read(id)
  local r = agent_reply(id)
  if presence_lapsed(id) then
    local h = r[1]
    for i = 1, #h - 1, 2 do
      if h[i] == 'status' then
        h[i + 1] = 'offline'
      end
    end
  end
  return r
end

if op == 'customer' then
  local id = canonical(arg)
  if redis.call('EXISTS', key('cust', id)) == 0 then
    return false
  end
  return customer_reply(id)
elseif op == 'customer_by_identity' then
  local id = owner_of(arg)
  if not id or redis.call('EXISTS', key('cust', id)) == 0 then
    return false
  end
  return customer_reply(id)
elseif op == 'agent' then
  if redis.call('EXISTS', key('agent', arg)) == 0 then
    return false
  end
  return agent_read(arg)
elseif op == 'agents' then
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':agents')) do
    if redis.call('EXISTS', key('agent', id)) == 1 then
      out[#out + 1] = agent_read(id)
    end
  end
  return out
elseif op == 'conversation' then
  return conv_reply(arg)
elseif op == 'open_conversation' then
  -- The customer's open conversation (all nil when it has none).
  return conv_reply(redis.call('GET', key('open', canonical(arg))) or '')
elseif op == 'messages' then
  -- arg is the negative start index (-limit).
  return {
    redis.call('HGET', key('conv', ARGV[4]), 'customer_id'),
    redis.call('LRANGE', key('conv-msgs', ARGV[4]), arg, -1),
  }
elseif op == 'agent_conversations' then
  if redis.call('EXISTS', key('agent', arg)) == 0 then
    return not_found('agent', arg)
  end
  local out = {}
  for _, id in ipairs(redis.call('LRANGE', key('agent-convs', arg), 0, -1)) do
    if redis.call('EXISTS', key('conv', id)) == 1 then
      out[#out + 1] = conv_reply(id)
    end
  end
  return { 'ok', out }
elseif op == 'idle_bot' then
  -- arg is the pool; ARGV[4] the stamp everything returned is older than, ARGV[5] the limit.
  local out = {}
  local members = redis.call('ZRANGEBYLEX', key('bot-held', arg), '-', '(' .. ARGV[4],
    'LIMIT', 0, tonumber(ARGV[5]))
  for _, member in ipairs(members) do
    local id = string.match(member, '|(.*)$')
    if redis.call('HGET', key('conv', id), 'status') == 'bot' then
      out[#out + 1] = conv_reply(id)
    end
  end
  return out
elseif op == 'queue' then
  local out = {}
  for _, id in ipairs(redis.call('LRANGE', key('queue', arg), 0, -1)) do
    local c = redis.call('HMGET', key('conv', id), 'status', 'pool')
    if c[1] == 'queued' and c[2] == arg then
      out[#out + 1] = id
    end
  end
  return out
end
return redis.error_reply('unknown read operation ' .. tostring(op))
