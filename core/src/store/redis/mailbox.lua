-- Mailboxes (Store::mailbox_push / mailbox_read / mailbox_ack). ARGV: prefix, op, mailbox key,
-- then the op's arguments. `P:mailbox:{key}` is a list of item ids, oldest first, and
-- `P:mailbox-items:{key}` a hash of id -> item; both expire together, `ttl` after the latest
-- push, and Redis deletes both once they are empty.
--   push: id, item, max length (>= 1), ttl ms -> 1 if added, 0 if the id was there already
--   read: [limit] -> {length, id, item, id, item, ...}: the number of items, then the oldest
--         `limit` items (all of them without a limit), oldest first
--   ack: id, id, ... -> the number of items removed

local op, name = ARGV[2], ARGV[3]
local ids_key, items_key = key('mailbox', name), key('mailbox-items', name)

if op == 'push' then
  return mailbox_push(name, ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7])
elseif op == 'read' then
  local limit = tonumber(ARGV[4])
  local ids = {}
  if limit ~= 0 then
    ids = redis.call('LRANGE', ids_key, 0, limit and limit - 1 or -1)
  end
  local out = { redis.call('LLEN', ids_key) }
  local i = 1
  -- HMGET in chunks (unpack has a stack limit).
  while i <= #ids do
    local j = math.min(i + 999, #ids)
    local items = redis.call('HMGET', items_key, unpack(ids, i, j))
    for n = i, j do
      local item = items[n - i + 1]
      if item then
        out[#out + 1] = ids[n]
        out[#out + 1] = item
      end
    end
    i = j + 1
  end
  return out
elseif op == 'ack' then
  local removed = 0
  for n = 4, #ARGV do
    if redis.call('HDEL', items_key, ARGV[n]) == 1 then
      -- The outbox's republisher acknowledges the oldest item, a published reply one of the
      -- newest: look at the head, then search from the tail, so that neither walks a long list.
      if redis.call('LINDEX', ids_key, 0) == ARGV[n] then
        redis.call('LPOP', ids_key)
      else
        redis.call('LREM', ids_key, -1, ARGV[n])
      end
      removed = removed + 1
    end
  end
  return removed
end
return redis.error_reply('unknown mailbox operation `' .. tostring(op) .. '`')
