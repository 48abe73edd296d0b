-- start_conversation: an agent writes first to a customer. ARGV: prefix, customer id (possibly
-- merged away), agent id, conversation id, pool, now, tenant, channel kind, channel id,
-- recipient (Sender JSON), envelope id, envelope JSON (stored as given: reads fill in the
-- customer and conversation ids from the conversation), '1' when the agent becomes the
-- customer's last agent (else ''), then optionally a mailbox push made with the record:
-- mailbox, item id, item, max length, ttl ms.
-- Reply: {'ok', conversation} | error. Notes the change (`started`).
-- Every index record_inbound writes for a conversation it opens is written here too: the
-- customer's open pointer and `cust-convs` (erase_customer), the agent's list and its pools'
-- online index (take_conversation).

local asked, agent, conv, pool, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local tenant, channel_kind, channel_id, recipient = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local env_id, envelope, remember = ARGV[11], ARGV[12], ARGV[13] == '1'

local cust = canonical(asked)
if redis.call('EXISTS', key('cust', cust)) == 0 then
  return not_found('customer', asked)
end
local open = redis.call('GET', key('open', cust))
if open then
  local st = redis.call('HGET', key('conv', open), 'status')
  if st and st ~= 'closed' then
    return conflict('conversation_open', 'customer `' .. cust
      .. '` has the open conversation `' .. open .. '`; reply in it')
  end
end
local a = redis.call('HMGET', key('agent', agent), 'status', 'idle_since', 'capacity')
if not a[1] then
  return not_found('agent', agent)
end
local load = redis.call('LLEN', key('agent-convs', agent))
if load >= (tonumber(a[3]) or 0) then
  return conflict('agent_at_capacity', 'agent `' .. agent .. '` holds ' .. load
    .. ' conversations, its capacity')
end

local ck = key('conv', conv)
redis.call('HSET', ck, 'id', conv, 'tenant', tenant, 'customer_id', cust, 'pool', pool,
  'status', 'assigned', 'agent_id', agent, 'channel_kind', channel_kind,
  'channel_id', channel_id, 'recipient', recipient, 'replies_since_inbound', '1',
  'created_at', now, 'updated_at', now, 'assigned_at', now, 'assigned_by', 'write_first',
  'message_count', '1')
if remember then
  -- take_conversation makes the agent the customer's last, as for a conversation opened
  -- preferring the last agent (record_inbound).
  redis.call('HSET', ck, 'remember_agent', '1')
end
redis.call('SET', key('open', cust), conv)
-- The index erase_customer finds the customer's conversations by.
redis.call('SADD', key('cust-convs', cust), conv)
take_conversation(agent, conv, now, a)
redis.call('SET', key('msg', env_id), conv)
redis.call('RPUSH', key('conv-msgs', conv), envelope)
trim_messages(conv)
if ARGV[14] then
  mailbox_push(ARGV[14], ARGV[15], ARGV[16], tonumber(ARGV[17]), ARGV[18])
end
note('started', now, conv, false)
return { 'ok', conv_reply(conv) }
