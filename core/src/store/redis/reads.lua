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

-- The statuses of a `,`-separated list, as a set (empty for an empty list).
local function status_set(list)
  local set = {}
  for status in string.gmatch(list, '[^,]+') do
    set[status] = true
  end
  return set
end

-- Sorts `found` ({id, at}) by creation time, then id: newest first when `newest_first`.
local function sort_by_creation(found, newest_first)
  table.sort(found, function(a, b)
    local x, y = a, b
    if newest_first then
      x, y = b, a
    end
    if x.at ~= y.at then
      return lt(x.at, y.at)
    end
    return lt(x.id, y.id)
  end)
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
elseif op == 'queue_stats' then
  -- {how many entries wait in the pool's queues, the earliest queued_at of their live heads
  -- (false when none)}. Stale entries at a head are passed over, not counted.
  local depth, oldest = 0, false
  for _, sig in ipairs(pool_queues(arg)) do
    local q = queue_key(arg, sig)
    local len = redis.call('LLEN', q)
    for i = 0, len - 1 do
      local entry = queue_entry(redis.call('LINDEX', q, i), arg, sig)
      if entry then
        depth = depth + len - i
        if entry[2] ~= '' and (not oldest or lt(entry[2], oldest)) then
          oldest = entry[2]
        end
        break
      end
    end
  end
  return { depth, oldest }
elseif op == 'queue' then
  -- The pool's queues merged by their heads (head_before, as assign_queued offers them), each
  -- in its order.
  local queues, pos = {}, {}
  for i, sig in ipairs(pool_queues(arg)) do
    local live = {}
    for _, id in ipairs(redis.call('LRANGE', queue_key(arg, sig), 0, -1)) do
      local entry = queue_entry(id, arg, sig)
      if entry then
        live[#live + 1] = entry
      end
    end
    queues[i], pos[i] = live, 1
  end
  local out = {}
  while true do
    local best
    for i, live in ipairs(queues) do
      local head = live[pos[i]]
      if head and (not best or head_before(head, queues[best][pos[best]])) then
        best = i
      end
    end
    if not best then
      return out
    end
    out[#out + 1] = queues[best][pos[best]][1]
    pos[best] = pos[best] + 1
  end
elseif op == 'customer_conversations' then
  -- arg is the customer; ARGV[4] the statuses listed (`,`-separated, every one when empty),
  -- ARGV[5] the cursor (a conversation id; none when empty), ARGV[6] the limit. The
  -- conversations opened for the profile and for each profile merged into it (P:cust-convs),
  -- newest first (created_at, then id, descending).
  local cust = canonical(arg)
  if redis.call('EXISTS', key('cust', cust)) == 0 then
    return not_found('customer', cust)
  end
  local owners = { cust }
  for _, m in ipairs(redis.call('LRANGE', key('cust-merged', cust), 0, -1)) do
    owners[#owners + 1] = m
  end
  local found, seen = {}, {}
  for _, owner in ipairs(owners) do
    for _, id in ipairs(redis.call('SMEMBERS', key('cust-convs', owner))) do
      if not seen[id] then
        seen[id] = true
        local c = redis.call('HMGET', key('conv', id), 'created_at', 'status')
        -- Expired conversations keep their entry; they are skipped.
        if c[1] then
          found[#found + 1] = { id = id, at = c[1], status = c[2] }
        end
      end
    end
  end
  sort_by_creation(found, true)
  local start = 1
  if ARGV[5] ~= '' then
    start = nil
    for i, c in ipairs(found) do
      if c.id == ARGV[5] then
        start = i + 1
        break
      end
    end
    if not start then
      return conflict('unknown_cursor',
        '`' .. ARGV[5] .. '` is not a conversation of customer `' .. cust .. '`')
    end
  end
  local wanted = status_set(ARGV[4])
  local all, limit, out = ARGV[4] == '', tonumber(ARGV[6]), {}
  for i = start, #found do
    if #out >= limit then
      break
    end
    if all or wanted[found[i].status] then
      out[#out + 1] = conv_reply(found[i].id)
    end
  end
  return { 'ok', out }
elseif op == 'pool_conversations' then
  -- arg is the pool; ARGV[4] the open statuses listed (`,`-separated, every one when empty),
  -- ARGV[5] the limit. Candidates come from the pool's queue, its bot index and every agent's
  -- conversations (no index lists a pool's assigned ones); oldest first (created_at, then id).
  local wanted = status_set(ARGV[4])
  if ARGV[4] == '' then
    wanted = { bot = true, queued = true, assigned = true }
  end
  local candidates = {}
  if wanted.queued then
    for _, sig in ipairs(pool_queues(arg)) do
      for _, id in ipairs(redis.call('LRANGE', queue_key(arg, sig), 0, -1)) do
        candidates[#candidates + 1] = id
      end
    end
  end
  if wanted.bot then
    for _, member in ipairs(redis.call('ZRANGE', key('bot-held', arg), 0, -1)) do
      candidates[#candidates + 1] = string.match(member, '|(.*)$')
    end
  end
  if wanted.assigned then
    for _, agent in ipairs(redis.call('SMEMBERS', P .. ':agents')) do
      for _, id in ipairs(redis.call('LRANGE', key('agent-convs', agent), 0, -1)) do
        candidates[#candidates + 1] = id
      end
    end
  end
  local found, seen = {}, {}
  for _, id in ipairs(candidates) do
    if id and not seen[id] then
      seen[id] = true
      local c = redis.call('HMGET', key('conv', id), 'pool', 'status', 'created_at')
      if c[1] == arg and c[2] ~= 'closed' and c[2] and wanted[c[2]] and c[3] then
        found[#found + 1] = { id = id, at = c[3] }
      end
    end
  end
  sort_by_creation(found, false)
  local limit, out = tonumber(ARGV[5]), {}
  for i = 1, math.min(#found, limit) do
    out[i] = conv_reply(found[i].id)
  end
  return out
elseif op == 'pending_offers' then
  -- Conversations offered to an agent and not accepted yet, oldest offer first.
  local out = {}
  for _, member in ipairs(redis.call('ZRANGE', P .. ':offers', 0, -1)) do
    out[#out + 1] = conv_reply(string.match(member, '|(.*)$'))
  end
  return out
end
return redis.error_reply('unknown read operation ' .. tostring(op))
