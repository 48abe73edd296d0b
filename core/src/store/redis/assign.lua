-- assign_queued. ARGV: prefix, pool, now, and optionally `noted`: then each assignment is also
-- noted (Store::assign_queued_noted). Reply: {{conversation, agent id}...}, in order.
-- Repeatedly: the head of the pool's queue (stale entries dropped) goes to the first agent of
-- the pool's index of agents with room (idle_since, then id). Reading the index's first member
-- costs the same with 3 agents or 3 000. A candidate whose tracked presence lapsed (its gateway
-- stopped heart-beating) is set offline here and skipped; a member that no longer has room or
-- is not online (an index written before it held only agents with room) is dropped.

local pool, now = ARGV[2], ARGV[3]
local qk, zk = key('queue', pool), key('pool-online', pool)
local out = {}

-- The agent id of the index's first member that can take a conversation, with its {status,
-- idle_since, capacity}; nil when there is none.
local function first_ready_agent()
  while true do
    local m = redis.call('ZRANGE', zk, 0, 0)[1]
    if not m then
      return nil
    end
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
  end
end

while true do
  local head = redis.call('LINDEX', qk, 0)
  if not head then
    break
  end
  local c = redis.call('HMGET', key('conv', head), 'status', 'pool')
  if c[1] ~= 'queued' or c[2] ~= pool then
    -- Stale entry (closed or moved meanwhile).
    redis.call('LPOP', qk)
  else
    local chosen, agent = first_ready_agent()
    if not chosen then
      break
    end
    redis.call('LPOP', qk)
    take_conversation(chosen, head, now, agent)
    redis.call('HSET', key('conv', head), 'status', 'assigned', 'agent_id', chosen,
      'assigned_at', now, 'updated_at', now)
    if ARGV[4] then
      note('assigned', now, head)
    end
    out[#out + 1] = { conv_reply(head), chosen }
  end
end
return out
