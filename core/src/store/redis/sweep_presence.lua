-- expire_lapsed_agents. ARGV: prefix, now. Reply: {agent...}: the presence-tracked agents whose
-- presence had lapsed, set offline by this call (as assignment would when it meets them).

local now = ARGV[2]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. ':agents')) do
  if presence_lapsed(id) then
    expire_presence(id, now)
    out[#out + 1] = agent_reply(id)
  end
end
return out
