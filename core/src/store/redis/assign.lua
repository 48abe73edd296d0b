-- assign_queued. ARGV: prefix, pool, now. Reply: {{conversation, agent id}...}, in order.
-- Repeatedly: the head of the pool's queue (stale entries dropped) goes to the first agent of
-- the pool's online index (idle_since, then id) that is online and has room. A candidate whose
-- tracked presence lapsed (its gateway stopped heart-beating) is set offline here and skipped.

local pool, now = ARGV[2], ARGV[3]
local qk, zk = key('queue', pool), key('pool-online', pool)
local out = {}
-- Agents seen full or not online: assignment only adds load, so they stay out in this call.
local skip = {}
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
    local chosen = nil
    for _, m in ipairs(redis.call('ZRANGE', zk, 0, -1)) do
      local sep = string.find(m, '|', 1, true)
      local aid = sep and string.sub(m, sep + 1)
      if aid and not skip[aid] then
        local a = redis.call('HMGET', key('agent', aid), 'status', 'capacity', 'presence')
        if a[3] == 'live' and redis.call('EXISTS', key('presence', aid)) == 0 then
          expire_presence(aid, now)
        elseif a[1] == 'online'
          and redis.call('LLEN', key('agent-convs', aid)) < (tonumber(a[2]) or 0) then
          chosen = aid
          break
        end
        skip[aid] = true
      end
    end
    if not chosen then
      break
    end
    redis.call('LPOP', qk)
    redis.call('RPUSH', key('agent-convs', chosen), head)
    set_idle(chosen, now)
    redis.call('HSET', key('agent', chosen), 'updated_at', now)
    redis.call('HSET', key('conv', head), 'status', 'assigned', 'agent_id', chosen,
      'assigned_at', now, 'updated_at', now)
    out[#out + 1] = { conv_reply(head), chosen }
  end
end
return out
