-- update_customer. ARGV: prefix, customer id, now, the most tags and the most attributes a
-- profile may have, then four counted lists (a count, then its items): the tags to remove, the
-- tags to add, the attributes to set as (name, JSON value) pairs, the attributes to remove.
-- Reply: {'ok', customer} | error, before writing anything. Notes the update
-- (`customer_updated`). Attribute values are JSON written and read by Rust only.

local now = ARGV[3]
local max_tags, max_attrs = tonumber(ARGV[4]), tonumber(ARGV[5])

-- The counted list at ARGV[at], of entries `width` items wide, flattened; and the index after it.
local function counted(at, width)
  local n = tonumber(ARGV[at]) * width
  local items = {}
  for i = 1, n do
    items[i] = ARGV[at + i]
  end
  return items, at + n + 1
end

local next_at = 6
local remove_tags, add_tags, set_attrs, unset_attrs
remove_tags, next_at = counted(next_at, 1)
add_tags, next_at = counted(next_at, 1)
set_attrs, next_at = counted(next_at, 2)
unset_attrs = counted(next_at, 1)

local cust = canonical(ARGV[2])
if redis.call('EXISTS', key('cust', cust)) == 0 then
  return not_found('customer', cust)
end

-- An update may not leave more than `max` items, unless it leaves no more than there were (a
-- merge keeps both profiles' tags and attributes, which can exceed the limit).
local function past_limit(code, what, before, after, max)
  if after > max and after > before then
    return conflict(code, 'a customer may have at most ' .. max .. ' ' .. what
      .. '; this update would leave ' .. after)
  end
  return nil
end

-- Tags: the removed ones gone, the added ones appended once each; the order is kept.
local tk = key('cust-tags', cust)
local before_tags = redis.call('LRANGE', tk, 0, -1)
local removed = {}
for _, t in ipairs(remove_tags) do
  removed[t] = true
end
local tags, has = {}, {}
for _, t in ipairs(before_tags) do
  if not removed[t] and not has[t] then
    tags[#tags + 1] = t
    has[t] = true
  end
end
for _, t in ipairs(add_tags) do
  if not has[t] then
    tags[#tags + 1] = t
    has[t] = true
  end
end
local refused = past_limit('too_many_tags', 'tags', #before_tags, #tags, max_tags)
if refused then
  return refused
end

-- Attributes: a JSON Merge Patch at the top level (names are unique: Rust sends a JSON object).
local ak = key('cust-attrs', cust)
local before_attrs = redis.call('HLEN', ak)
local attrs = before_attrs
for i = 1, #set_attrs, 2 do
  if redis.call('HEXISTS', ak, set_attrs[i]) == 0 then
    attrs = attrs + 1
  end
end
for _, name in ipairs(unset_attrs) do
  if redis.call('HEXISTS', ak, name) == 1 then
    attrs = attrs - 1
  end
end
refused = past_limit('too_many_attributes', 'attributes', before_attrs, attrs, max_attrs)
if refused then
  return refused
end

redis.call('DEL', tk)
push_all(tk, tags)
for _, name in ipairs(unset_attrs) do
  redis.call('HDEL', ak, name)
end
for i = 1, #set_attrs, 2 do
  redis.call('HSET', ak, set_attrs[i], set_attrs[i + 1])
end
note('customer_updated', now, cust, nil)
return { 'ok', customer_reply(cust) }
