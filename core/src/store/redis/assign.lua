-- assign_queued. ARGV: prefix, pool, now, then optionally `noted` (each assignment is also
-- noted: Store::assign_queued_noted; empty: not) and `1` when the pool chooses the least busy
-- agent (Store::set_least_busy_pools). Reply: {{conversation, agent id}...}, in order.
-- Repeatedly: the first head (higher priority, then older, then lower id: head_before) of the
-- pool's queues (one per priority and skill set asked for; stale entries dropped) goes to the
-- first agent of the pool's index of agents with room (idle_since, then id) who has every skill
-- it asks for (in a least-busy pool, the one of them holding the fewest conversations, the
-- first in index order among equals; that reads the whole index unless one holds none); to the
-- customer's last agent instead when the conversation prefers it (its
-- `preferred_agent`) and that agent is such an agent. A queue whose head no such agent can take
-- is passed over until the end of this call, so it holds back only conversations of its
-- priority asking for the same skills. Reading the index's first member costs the same with 3
-- agents or 3 000; a head asking for skills reads members until one has them. A candidate whose
-- tracked presence lapsed (its gateway stopped heart-beating) is set offline here and skipped; a
-- member that no longer has room or is not online (an index written before it held only agents
-- with room) is dropped.

local pool, now = ARGV[2], ARGV[3]
local noted, least_busy = ARGV[4] == 'noted', ARGV[5] == '1'
local zk = key('pool-online', pool)
local out = {}

-- Whether agent `aid` has every skill of `wanted` (a list).
local function has_skills(aid, wanted)
  local held = {}
  for _, s in ipairs(redis.call('LRANGE', key('agent-skills', aid), 0, -1)) do
    held[s] = true
  end
  for _, s in ipairs(wanted) do
    if not held[s] then
      return false
    end
  end
  return true
end

-- Member `m` of the index, if its agent can take a conversation now: the agent id and its
-- {status, idle_since, capacity}. Otherwise nil, and the member is dropped from the index (an
-- agent whose tracked presence lapsed is also set offline).
local function ready_member(m)
  local sep = string.find(m, '|', 1, true)
  local aid = sep and string.sub(m, sep + 1)
  if aid then
    local a = redis.call('HMGET', key('agent', aid), 'status', 'capacity', 'presence',
      'idle_since')
    if a[3] == 'live' and redis.call('EXISTS', key('presence', aid)) == 0 then
      expire_presence(aid, now)
      -- Announced (agent.updated) by the next sweep, which has the agent's record to hand.
      redis.call('SADD', P .. ':agents-expired', aid)
    elseif a[1] == 'online' and a[4] == string.sub(m, 1, sep - 1)
      and redis.call('LLEN', key('agent-convs', aid)) < (tonumber(a[2]) or 0) then
      return aid, { a[1], a[4], a[2] }
    end
  end
  redis.call('ZREM', zk, m)
  return nil
end

-- The agent to take a conversation asking for `skills` (a JSON array, or false for none),
-- preferring agent `preferred` and passing over agent `avoid` (each false for none), with its
-- {status, idle_since, capacity}, and the rule that chose it (Conversation::assigned_by):
-- `preferred` when it is in the index, ready and has the skills (and is not `avoid`):
-- `last_agent`; else the index's first such member other than `avoid` (in a least-busy pool,
-- the one of them holding the fewest conversations, the first in index order among equals: the
-- whole index is read unless one holds none): `longest_idle` or `least_busy`; else `avoid` if
-- it is one: `no_other_agent`; nil when there is none.
local function first_ready_agent(skills, preferred, avoid)
  local wanted = skills and cjson.decode(skills)
  if preferred and preferred ~= avoid then
    local idle = redis.call('HGET', key('agent', preferred), 'idle_since')
    local m = idle and online_member(idle, preferred)
    if m and redis.call('ZSCORE', zk, m) then
      local aid, a = ready_member(m)
      if aid and (not wanted or has_skills(aid, wanted)) then
        return aid, a, 'last_agent'
      end
    end
  end
  local pos, avoided, avoided_a = 0, nil, nil
  local chosen, chosen_a, least = nil, nil, nil
  while true do
    local m = redis.call('ZRANGE', zk, pos, pos)[1]
    if not m then
      break
    end
    local aid, a = ready_member(m)
    if aid then
      if not wanted or has_skills(aid, wanted) then
        if aid == avoid then
          avoided, avoided_a = aid, a
        elseif not least_busy then
          return aid, a, 'longest_idle'
        else
          local load = redis.call('LLEN', key('agent-convs', aid))
          if not least or load < least then
            chosen, chosen_a, least = aid, a, load
          end
          if load == 0 then
            break
          end
        end
      end
      pos = pos + 1
    end
  end
  if chosen then
    return chosen, chosen_a, 'least_busy'
  end
  return avoided, avoided_a, 'no_other_agent'
end

-- The live head of pool's queue `sig` as a queue_entry, stale entries dropped; false when the
-- queue is empty (an empty sub-queue leaves the pool's set).
local function live_head(sig)
  local qk = queue_key(pool, sig)
  while true do
    local id = redis.call('LINDEX', qk, 0)
    if not id then
      if sig then
        redis.call('SREM', key('sub-queues', pool), sig)
      end
      return false
    end
    local entry = queue_entry(id, pool, sig)
    if entry then
      return entry
    end
    redis.call('LPOP', qk)
  end
end

local queues = pool_queues(pool)
-- Per queue (by position in `queues`): its live head once read (false: empty), and whether no
-- ready agent can take it.
local heads, blocked = {}, {}
while true do
  local best
  for i, sig in ipairs(queues) do
    if not blocked[i] then
      if heads[i] == nil then
        heads[i] = live_head(sig)
      end
      if heads[i] and (not best or head_before(heads[i], heads[best])) then
        best = i
      end
    end
  end
  if not best then
    break
  end
  local entry = heads[best]
  local sig, head, skills = queues[best], entry[1], entry[4]
  local chosen, agent, by = first_ready_agent(skills, entry[5], entry[6])
  if chosen then
    redis.call('LPOP', queue_key(pool, sig))
    heads[best] = nil
    take_conversation(chosen, head, now, agent)
    local ck = key('conv', head)
    redis.call('HSET', ck, 'status', 'assigned', 'agent_id', chosen, 'assigned_at', now,
      'assigned_by', by, 'updated_at', now)
    if entry[7] > 0 then
      -- An offer: the agent accepts it (offer.lua) or it goes back to the queue.
      redis.call('HSET', ck, 'offered_at', now)
      redis.call('ZADD', P .. ':offers', 0, offer_member(now, head))
    end
    if noted then
      note('assigned', now, head)
    end
    out[#out + 1] = { conv_reply(head), chosen }
  elseif not skills then
    -- Nobody has room at all.
    break
  else
    blocked[best] = true
  end
end
return out
