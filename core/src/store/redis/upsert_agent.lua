-- upsert_agent. ARGV: prefix, id, now, has name, name, has capacity, capacity, has status,
-- status, has pools, pool count, pools..., has skills, skill count, skills...
-- Reply: the agent. Notes the update.

local id, now = ARGV[2], ARGV[3]
local has_name, name = ARGV[4] == '1', ARGV[5]
local has_capacity, capacity = ARGV[6] == '1', ARGV[7]
local has_status, status_arg = ARGV[8] == '1', ARGV[9]
local i = 10
local function list_arg()
  local has, count = ARGV[i] == '1', tonumber(ARGV[i + 1])
  local items = {}
  for j = 1, count do
    items[j] = ARGV[i + 1 + j]
  end
  i = i + 2 + count
  return has, items
end
local has_pools, pools = list_arg()
local has_skills, skills = list_arg()

local ak = key('agent', id)
local pk, sk = key('agent-pools', id), key('agent-skills', id)
if redis.call('EXISTS', ak) == 0 then
  redis.call('HSET', ak, 'id', id, 'name', id, 'capacity', 1, 'status', 'offline',
    'idle_since', now, 'updated_at', now)
  redis.call('DEL', pk, sk, key('agent-convs', id))
  redis.call('RPUSH', pk, 'default')
  redis.call('SADD', P .. ':agents', id)
end
-- A lapsed presence session is over: expire it first, then apply the update.
expire_presence(id, now)
if has_status then
  local presence = redis.call('HGET', ak, 'presence')
  if presence and presence ~= 'live' then
    -- An explicit status replaces the one a resumed heartbeat would restore.
    redis.call('HDEL', ak, 'presence')
  end
end

local old = unindex_agent(id)
if has_name then
  redis.call('HSET', ak, 'name', name)
end
if has_capacity then
  redis.call('HSET', ak, 'capacity', capacity)
end
if has_pools then
  redis.call('DEL', pk)
  push_all(pk, pools)
end
if has_skills then
  redis.call('DEL', sk)
  push_all(sk, skills)
end
local status, idle = old[1], old[2]
if has_status then
  if status_arg == 'online' and status ~= 'online' then
    idle = now
  end
  status = status_arg
end
redis.call('HSET', ak, 'status', status, 'idle_since', idle, 'updated_at', now)
index_agent(id)
note('agent_updated', now, id)
return agent_reply(id)
