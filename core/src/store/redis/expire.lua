-- expire_closed. ARGV: prefix, closed_before (RFC 3339, as stored), limit.
-- Deletes conversations closed before `closed_before`, oldest first, at most `limit` entries of
-- the index `P:closed` (members `{closed_at}|{id}`, byte order = close order): the conversation,
-- its messages and the `P:msg` record of each message id. A conversation closed by a merge is
-- kept (its messages moved to the survivor's, whose expiry deletes their records).
-- Reply: the number of index entries handled (fewer than `limit`: none is left before the time).

local idx = P .. ':closed'
local entries = redis.call('ZRANGEBYLEX', idx, '-', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, entry in ipairs(entries) do
  local id = string.match(entry, '^[^|]*|(.*)$')
  if id then
    local ck = key('conv', id)
    local c = redis.call('HMGET', ck, 'status', 'close_reason')
    if c[1] == 'closed' and c[2] ~= 'merged' then
      delete_conversation(id)
    end
  end
  redis.call('ZREM', idx, entry)
end
return #entries
