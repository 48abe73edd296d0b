-- close_conversation. ARGV: prefix, id, reason, now.
-- Reply: {'ok', conversation, released agent or nil} | error. Notes the close.

local id = ARGV[2]
local released, err = close_conversation(id, ARGV[3], ARGV[4])
if err then
  return err
end
note('closed', ARGV[4], id, released)
return { 'ok', conv_reply(id), released and agent_reply(released) or false }
