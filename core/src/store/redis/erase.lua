-- Erasure of customers. ARGV: prefix, op, then:
--   one:   customer id, reason, now -> {'ok', erasure} | error (Store::erase_customer)
--   quiet: quiet_before, limit, now, reason -> {handled, erasure, ...}
--          (Store::erase_quiet_customers)
-- An erasure is {customer id, tenant, reason, {merged_from...}, {conversation...}}. Each erasure
-- is noted (`erased`, with its JSON as the detail).

-- A JSON array of strings.
local function json_strings(items)
  local out = {}
  for i, s in ipairs(items) do
    out[i] = cjson.encode(s)
  end
  return '[' .. table.concat(out, ',') .. ']'
end

-- The customer's open conversation, if it is open.
local function open_conversation(cust)
  local conv = redis.call('GET', key('open', cust))
  if not conv then
    return nil
  end
  local st = redis.call('HGET', key('conv', conv), 'status')
  if st and st ~= 'closed' then
    return conv
  end
  return nil
end

-- Deletes the surviving profile `cust` (which has no open conversation), the profiles merged
-- into it and every conversation of theirs with its messages; returns the erasure.
local function erase(cust, reason, now)
  local ck = key('cust', cust)
  local tenant = redis.call('HGET', ck, 'tenant') or 'default'
  local merged = redis.call('LRANGE', key('cust-merged', cust), 0, -1)
  local owners = { cust }
  for _, m in ipairs(merged) do
    owners[#owners + 1] = m
  end
  local convs = {}
  for _, owner in ipairs(owners) do
    local sk = key('cust-convs', owner)
    for _, conv in ipairs(redis.call('SMEMBERS', sk)) do
      local closed_at = redis.call('HGET', key('conv', conv), 'closed_at')
      if closed_at then
        redis.call('ZREM', P .. ':closed', closed_at .. '|' .. conv)
      end
      delete_conversation(conv)
      convs[#convs + 1] = conv
    end
    redis.call('DEL', sk, key('open', owner), key('last-agent', owner))
    if owner ~= cust then
      redis.call('DEL', key('redirect', owner))
    end
  end
  table.sort(convs, lt)
  for _, ident in ipairs(redis.call('LRANGE', key('cust-idents', cust), 0, -1)) do
    local o = redis.call('GET', key('ident', ident))
    if o and canonical(o) == cust then
      redis.call('DEL', key('ident', ident))
    end
  end
  redis.call('DEL', ck, key('cust-idents', cust), key('cust-identinfo', cust),
    key('cust-merged', cust), key('cust-tags', cust), key('cust-attrs', cust))
  note('erased', now, cust, '{"customer_id":' .. cjson.encode(cust)
    .. ',"tenant":' .. cjson.encode(tenant) .. ',"reason":' .. cjson.encode(reason)
    .. ',"merged_from":' .. json_strings(merged) .. ',"conversations":' .. json_strings(convs)
    .. '}')
  return { cust, tenant, reason, merged, convs }
end

local op = ARGV[2]
if op == 'one' then
  local cust, reason, now = canonical(ARGV[3]), ARGV[4], ARGV[5]
  if redis.call('EXISTS', key('cust', cust)) == 0 then
    return not_found('customer', cust)
  end
  local open = open_conversation(cust)
  if open then
    return conflict('customer_has_open_conversation',
      'customer `' .. cust .. '` has the open conversation `' .. open .. '`: close it first')
  end
  return { 'ok', erase(cust, reason, now) }
elseif op == 'quiet' then
  local before, limit, now, reason = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
  local idx = P .. ':quiet'
  local entries = redis.call('ZRANGEBYLEX', idx, '-', '(' .. before, 'LIMIT', 0, limit)
  local out = { #entries }
  for _, entry in ipairs(entries) do
    redis.call('ZREM', idx, entry)
    local id = string.match(entry, '^[^|]*|(.*)$')
    -- An erased profile, or one merged into another (which has its own entry), is dropped.
    if id and canonical(id) == id and redis.call('EXISTS', key('cust', id)) == 1 then
      local last = redis.call('HGET', key('cust', id), 'last_seen')
      if open_conversation(id) then
        redis.call('ZADD', idx, 0, now .. '|' .. id)
      elseif last and not lt(last, before) then
        redis.call('ZADD', idx, 0, last .. '|' .. id)
      else
        out[#out + 1] = erase(id, reason, now)
      end
    end
  end
  return out
end
return redis.error_reply('unknown erase operation `' .. tostring(op) .. '`')
