-- accept_offer / take_back. ARGV: prefix, `accept` | `withdraw`, conversation id, agent id,
-- now, and for `withdraw`: `declined` | `expired` | `unanswered`, then for `expired` the
-- `offered_at` of the offer that expired (the conversation is taken back only if it is still
-- that offer), for `unanswered` the cutoff (taken back only if it is assigned to the agent, its
-- offer accepted, and both its `awaiting_reply_since` and its `assigned_at` are before it) and
-- `1` | `0`: whether the agent is set away.
-- Notes the answer (`accepted`, `declined`, `offer_expired` or `unanswered`, naming the agent;
-- see `note` in prelude.lua), and when an expiry or an unanswered customer sets its agent away,
-- the agent's update.
-- Reply: {'ok', conversation} (accept) | {'ok', conversation, released agent} (withdraw) | error.

local op, id, agent, now, why = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ck = key('conv', id)
local c = redis.call('HMGET', ck, 'status', 'agent_id', 'offered_at', 'pool', 'priority',
  'skills', 'awaiting_reply_since', 'assigned_at')
if not c[1] then
  return not_found('conversation', id)
end
if why == 'unanswered' then
  local before = ARGV[7]
  if c[1] ~= 'assigned' or c[2] ~= agent or c[3] or not c[7] or not lt(c[7], before)
    or not c[8] or not lt(c[8], before) then
    return conflict('conversation_changed', 'conversation `' .. id ..
      '` is not left unanswered by agent `' .. agent .. '` since before ' .. before)
  end
elseif c[1] ~= 'assigned' or c[2] ~= agent or not c[3]
  or (why == 'expired' and c[3] ~= ARGV[7]) then
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
local noted = { declined = 'declined', expired = 'offer_expired', unanswered = 'unanswered' }
note(noted[why], now, id, agent)
if why == 'expired' or (why == 'unanswered' and ARGV[8] == '1') then
  -- An agent that lets an offer expire or leaves a customer unanswered stops being given
  -- conversations (for the latter, where the pool says so).
  local status = unindex_agent(agent)[1]
  if status == 'online' then
    redis.call('HSET', key('agent', agent), 'status', 'away', 'updated_at', now)
    note('agent_updated', now, agent)
  end
  index_agent(agent)
end
return { 'ok', conv_reply(id), agent_reply(agent) }
