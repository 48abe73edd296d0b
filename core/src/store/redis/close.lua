-- close_conversation. ARGV: prefix, id, reason, now.
-- Reply: {'ok', conversation, released agent or nil} | error.

local id = ARGV[2]
local released, err = close_conversation(id, ARGV[3], ARGV[4])
if err then
  return err
end
return { 'ok', conv_reply(id), released and agent_reply(released) or false }
