-- heartbeat_agent. ARGV: prefix, id, ttl ms (0 ends the session), now.
-- Reply: {'ok', '1' if the heartbeat resumed a lapsed session and restored its status, else '0'}
-- | not_found.

local id, ttl, now = ARGV[2], tonumber(ARGV[3]) or 0, ARGV[4]
local ak, pk = key('agent', id), key('presence', id)
if redis.call('EXISTS', ak) == 0 then
  return not_found('agent', id)
end
if ttl <= 0 then
  -- A clean end; a session that had lapsed already is expired first.
  expire_presence(id, now)
  redis.call('DEL', pk)
  redis.call('HDEL', ak, 'presence')
  return { 'ok', '0' }
end
local a = redis.call('HMGET', ak, 'status', 'presence')
local resumed = '0'
if a[1] == 'offline' and a[2] and string.sub(a[2], 1, 7) == 'lapsed:' then
  local status = string.sub(a[2], 8)
  if status == 'online' then
    redis.call('HSET', ak, 'idle_since', now)
  end
  redis.call('HSET', ak, 'status', status, 'updated_at', now)
  index_agent(id)
  resumed = '1'
end
redis.call('HSET', ak, 'presence', 'live')
redis.call('SET', pk, now, 'PX', ttl)
return { 'ok', resumed }
