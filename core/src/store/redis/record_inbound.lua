-- record_inbound. ARGV: prefix, envelope id, has customer (1/0, or `canonical` when the id is
-- known to be the surviving profile's), customer id, pool, now,
-- id for a new conversation, tenant, channel kind, channel id, recipient (Sender JSON),
-- envelope JSON, the bot (agent id) that holds a conversation it opens, which then starts in
-- status `bot` instead of the pool's queue (empty: none), the skills such a conversation asks
-- of its agent (a JSON array; empty: none), its priority in the queue (empty: 0), and `1` when
-- it prefers the customer's last agent (`P:last-agent:{customer}`, then kept as the
-- conversation's `preferred_agent` until it is assigned), and the seconds its agents have to
-- accept it (`offer_secs`; empty or 0: assignments are final).
-- Reply: {'dup', opened by this envelope (1/0), conversation}
-- | {'ok', created (1/0), conversation} | error.

local env_id, customer_id, pool = ARGV[2], ARGV[4], ARGV[5]
local has_customer = ARGV[3] == '1' or ARGV[3] == 'canonical'
local now, new_conv, tenant = ARGV[6], ARGV[7], ARGV[8]
local channel_kind, channel_id, recipient, envelope = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local bot = ARGV[13] ~= '' and ARGV[13] or nil
local skills = ARGV[14] ~= '' and ARGV[14] or nil
local priority = tonumber(ARGV[15]) or 0
local prefer_last_agent = ARGV[16] == '1'
local offer_secs = tonumber(ARGV[17]) or 0

local mk = key('msg', env_id)
local seen = redis.call('GET', mk)
if seen then
  local conv = follow_merged(seen)
  if redis.call('EXISTS', key('conv', conv)) == 0 then
    return not_found('conversation', conv)
  end
  local opened = redis.call('HGET', key('conv', conv), 'opened_by') == env_id
  return { 'dup', opened and 1 or 0, conv_reply(conv) }
end
if not has_customer then
  return conflict('customer_unresolved', 'envelope `' .. env_id .. '` has no customer_id')
end

-- `canonical`: the caller passes a canonical customer id (route_inbound, from resolve_customer).
local cust = ARGV[3] == 'canonical' and customer_id or canonical(customer_id)
local ok = key('open', cust)
local conv = redis.call('GET', ok)
local created = 0
if not conv or redis.call('EXISTS', key('conv', conv)) == 0 then
  conv, created = new_conv, 1
end
local ck = key('conv', conv)
redis.call('SET', mk, conv)
redis.call('RPUSH', key('conv-msgs', conv), envelope)
trim_messages(conv)
-- What every inbound message sets on its conversation.
local latest = { 'channel_kind', channel_kind, 'channel_id', channel_id, 'recipient', recipient,
  'last_inbound_id', env_id, 'last_inbound_at', now, 'replies_since_inbound', '0',
  'updated_at', now }
if created == 1 then
  redis.call('HSET', ck, 'id', conv, 'tenant', tenant, 'customer_id', cust, 'pool', pool,
    'created_at', now, 'message_count', '1', 'opened_by', env_id, unpack(latest))
  redis.call('SET', ok, conv)
  -- The index erase_customer finds the customer's conversations by.
  redis.call('SADD', key('cust-convs', cust), conv)
  if skills then
    redis.call('HSET', ck, 'skills', skills)
  end
  if priority ~= 0 then
    redis.call('HSET', ck, 'priority', priority)
  end
  if offer_secs > 0 then
    redis.call('HSET', ck, 'offer_secs', offer_secs)
  end
  if prefer_last_agent then
    redis.call('HSET', ck, 'remember_agent', '1')
    local last_agent = redis.call('GET', key('last-agent', cust))
    if last_agent then
      redis.call('HSET', ck, 'preferred_agent', last_agent)
    end
  end
  if bot then
    redis.call('HSET', ck, 'status', 'bot', 'agent_id', bot)
    bot_touch(conv, now)
  else
    redis.call('HSET', ck, 'status', 'queued', 'queued_at', now)
    enqueue(conv, pool, queue_sig(priority, skills))
  end
else
  redis.call('HSET', ck, unpack(latest))
  redis.call('HINCRBY', ck, 'message_count', 1)
  if redis.call('HGET', ck, 'status') == 'bot' then
    bot_touch(conv, now)
  end
end
-- The customer waits for an answer since their first message after the last agent's reply.
redis.call('HSETNX', ck, 'awaiting_reply_since', now)
return { 'ok', created, conv_reply(conv) }
