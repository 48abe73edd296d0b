-- accept_offer / withdraw_offer. ARGV: prefix, `accept` | `withdraw`, conversation id, agent id,
-- now, and for `withdraw`: `declined` | `expired`, then for `expired` the `offered_at` of the
-- offer that expired (the conversation is taken back only if it is still that offer).
-- Notes the answer (`accepted`, `declined` or `offer_expired`, naming the agent; see `note` in
-- prelude.lua), and for an expired offer that sets its agent away, the agent's update.
-- Reply: {'ok', conversation} (accept) | {'ok', conversation, released agent} (withdraw) | error.

local op, id, agent, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ck = key('conv', id)
local c = redis.call('HMGET', ck, 'status', 'agent_id', 'offered_at', 'pool', 'priority',
  'skills')
if not c[1] then
  return not_found('conversation', id)
end
if c[1] ~= 'assigned' or c[2] ~= agent or not c[3]
  or (ARGV[6] == 'expired' and c[3] ~= ARGV[7]) then
  return conflict('no_pending_offer',
    'conversation `' .. id .. '` is not offered to agent `' .. agent .. '` now')
end

if op == 'accept' then
  clear_offer(id)
  redis.call('HSET', ck, 'updated_at', now)
  note('accepted', now, id, agent)
  return { 'ok', conv_reply(id) }
end

-- Back to the front of its queue (its queued_at kept), passing the agent over next time.
detach(id)
redis.call('HSET', ck, 'status', 'queued', 'updated_at', now, 'declined_by', agent)
redis.call('HDEL', ck, 'agent_id')
enqueue(id, c[4], queue_sig(c[5], c[6] or nil), true)
note(ARGV[6] == 'expired' and 'offer_expired' or 'declined', now, id, agent)
if ARGV[6] == 'expired' then
  -- An agent that lets an offer expire stops being offered conversations.
  local status = unindex_agent(agent)[1]
  if status == 'online' then
    redis.call('HSET', key('agent', agent), 'status', 'away', 'updated_at', now)
    note('agent_updated', now, agent)
  end
  index_agent(agent)
end
return { 'ok', conv_reply(id), agent_reply(agent) }
