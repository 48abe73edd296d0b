-- record_outbound. ARGV: prefix, conversation id, has agent (1/0), agent id, envelope id,
-- envelope JSON, now, then optionally a mailbox push made with the record: mailbox, item id,
-- item, max length, ttl ms. Reply: {'ok', conversation} | {'dup', conversation holding the
-- envelope id recorded before: nothing changed, nothing pushed} | error.

local id, has_agent, agent, env_id = ARGV[2], ARGV[3] == '1', ARGV[4], ARGV[5]
local envelope, now = ARGV[6], ARGV[7]

local seen = redis.call('GET', key('msg', env_id))
if seen then
  local conv = follow_merged(seen)
  if redis.call('EXISTS', key('conv', conv)) == 0 then
    return not_found('conversation', conv)
  end
  return { 'dup', conv_reply(conv) }
end

local ck = key('conv', id)
local c = redis.call('HMGET', ck, 'status', 'agent_id')
if not c[1] then
  return not_found('conversation', id)
end
if c[1] == 'closed' then
  return conflict('conversation_closed', 'conversation `' .. id .. '` is closed')
end
if has_agent and c[2] ~= agent then
  return conflict('not_assigned_to_agent',
    'conversation `' .. id .. '` is not assigned to agent `' .. agent .. '`')
end
redis.call('HSET', ck, 'updated_at', now)
redis.call('HINCRBY', ck, 'message_count', 1)
if c[1] == 'bot' then
  bot_touch(id, now)
end
-- Saturates at u32::MAX, like the embedded store.
if (tonumber(redis.call('HGET', ck, 'replies_since_inbound')) or 0) < 4294967295 then
  redis.call('HINCRBY', ck, 'replies_since_inbound', 1)
end
-- A reply of the agent holding it answers the customer (an automatic message does not).
if has_agent then
  redis.call('HDEL', ck, 'awaiting_reply_since')
end
redis.call('SET', key('msg', env_id), id)
redis.call('RPUSH', key('conv-msgs', id), envelope)
trim_messages(id)
if ARGV[8] then
  mailbox_push(ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12])
end
return { 'ok', conv_reply(id) }
