-- record_inbound. ARGV: prefix, envelope id, has customer (1/0), customer id, pool, now,
-- id for a new conversation, tenant, channel kind, channel id, recipient (Sender JSON),
-- envelope JSON. Reply: {'dup', opened by this envelope (1/0), conversation}
-- | {'ok', created (1/0), conversation} | error.

local env_id, has_customer, customer_id, pool = ARGV[2], ARGV[3] == '1', ARGV[4], ARGV[5]
local now, new_conv, tenant = ARGV[6], ARGV[7], ARGV[8]
local channel_kind, channel_id, recipient, envelope = ARGV[9], ARGV[10], ARGV[11], ARGV[12]

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

local cust = canonical(customer_id)
local ok = key('open', cust)
local conv = redis.call('GET', ok)
local created = 0
if not conv or redis.call('EXISTS', key('conv', conv)) == 0 then
  conv, created = new_conv, 1
  redis.call('HSET', key('conv', conv), 'id', conv, 'tenant', tenant, 'customer_id', cust,
    'status', 'queued', 'pool', pool, 'created_at', now, 'queued_at', now, 'message_count', 0, 'opened_by', env_id)
  redis.call('SET', ok, conv)
  redis.call('RPUSH', key('queue', pool), conv)
end
redis.call('SET', mk, conv)
redis.call('RPUSH', key('conv-msgs', conv), envelope)
trim_messages(conv)
local ck = key('conv', conv)
redis.call('HSET', ck, 'channel_kind', channel_kind, 'channel_id', channel_id, 'recipient',
  recipient, 'last_inbound_id', env_id, 'last_inbound_at', now, 'replies_since_inbound', 0,
  'updated_at', now)
redis.call('HINCRBY', ck, 'message_count', 1)
return { 'ok', created, conv_reply(conv) }
