-- expire_lapsed_agents. ARGV: prefix, now. Reply: {agent...}: the presence-tracked agents whose
-- presence had lapsed, set offline by this call (as assignment would when it meets them), then
-- those an assignment set offline since the last sweep (P:agents-expired), each once. Notes
-- each agent it returns.

local now = ARGV[2]
local out, seen = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', P .. ':agents')) do
  if presence_lapsed(id) then
    expire_presence(id, now)
    out[#out + 1] = agent_reply(id)
    note('agent_updated', now, id)
    seen[id] = true
  end
end
local expired = P .. ':agents-expired'
for _, id in ipairs(redis.call('SMEMBERS', expired)) do
  if not seen[id] and redis.call('EXISTS', key('agent', id)) == 1 then
    out[#out + 1] = agent_reply(id)
    note('agent_updated', now, id)
  end
end
redis.call('DEL', expired)
return out
