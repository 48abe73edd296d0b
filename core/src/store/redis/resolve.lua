-- resolve_customer. ARGV: prefix, tenant, explicit (1/0), has display name (1/0), display name,
-- now, id for a new profile, n, then n pairs (identity key, `strong`|`weak`), then the source
-- (envelope id; empty when none): a retry of the request that created the profile reports it
-- created again; then, optionally, `announced`: the profile is replied only when it was created
-- or others were merged into it (`false` in its place otherwise), as routing needs it (any other
-- value: always); then, optionally, `noted`: each merge and each conversation it closed are
-- noted (Store::resolve_customer_noted).
-- Reply: {'ok', created (1/0), customer, merges {{from, into, {via...}}...}, linked {...},
-- closed {{conversation, the agent or bot it released or false}...}, customer id}.

local tenant, explicit = ARGV[2], ARGV[3] == '1'
local has_name, name, now, new_id = ARGV[4] == '1', ARGV[5], ARGV[6], ARGV[7]
local n = tonumber(ARGV[8])
local idents, strengths = {}, {}
for i = 1, n do
  idents[i] = ARGV[7 + 2 * i]
  strengths[i] = ARGV[8 + 2 * i]
end
local source = ARGV[9 + 2 * n] or ''
local profile_if_announced = ARGV[10 + 2 * n] == 'announced'
local noted = ARGV[11 + 2 * n] == 'noted'

-- Merges profile `from` into `into`: identities, redirects, merged_from, tags, attributes, name,
-- first/last seen, and the open conversation. Returns the id of a conversation the merge
-- closed, if any, and the agent or bot that held it (false for none).
local function merge_customers(from, into)
  local lk = key('cust', from)
  if redis.call('EXISTS', lk) == 0 then
    return nil
  end
  local lids = redis.call('LRANGE', key('cust-idents', from), 0, -1)
  local linfo = redis.call('HGETALL', key('cust-identinfo', from))
  local lmerged = redis.call('LRANGE', key('cust-merged', from), 0, -1)
  local ltags = redis.call('LRANGE', key('cust-tags', from), 0, -1)
  local lattrs = redis.call('HGETALL', key('cust-attrs', from))
  local l = redis.call('HMGET', lk, 'display_name', 'first_seen', 'last_seen')
  for _, ident in ipairs(lids) do
    redis.call('SET', key('ident', ident), into)
  end
  -- Everything merged into `from` earlier now redirects straight to `into`.
  for _, m in ipairs(lmerged) do
    redis.call('SET', key('redirect', m), into)
  end
  redis.call('SET', key('redirect', from), into)

  local wk = key('cust', into)
  if redis.call('EXISTS', wk) == 1 then
    local winfo = key('cust-identinfo', into)
    local info = {}
    for i = 1, #linfo, 2 do
      info[linfo[i]] = linfo[i + 1]
    end
    for _, ident in ipairs(lids) do
      if info[ident] and redis.call('HEXISTS', winfo, ident) == 0 then
        redis.call('RPUSH', key('cust-idents', into), ident)
        redis.call('HSET', winfo, ident, info[ident])
      end
    end
    redis.call('RPUSH', key('cust-merged', into), from)
    push_all(key('cust-merged', into), lmerged)
    local wtags = key('cust-tags', into)
    for _, t in ipairs(ltags) do
      if not redis.call('LPOS', wtags, t) then
        redis.call('RPUSH', wtags, t)
      end
    end
    local wattrs = key('cust-attrs', into)
    for i = 1, #lattrs, 2 do
      redis.call('HSETNX', wattrs, lattrs[i], lattrs[i + 1])
    end
    local w = redis.call('HMGET', wk, 'display_name', 'first_seen', 'last_seen')
    if not w[1] and l[1] then
      redis.call('HSET', wk, 'display_name', l[1])
    end
    if l[2] and (not w[2] or lt(l[2], w[2])) then
      redis.call('HSET', wk, 'first_seen', l[2])
    end
    local last = w[3] or now
    if l[3] and lt(last, l[3]) then
      last = l[3]
    end
    if lt(last, now) then
      last = now
    end
    redis.call('HSET', wk, 'last_seen', last)
  end
  redis.call('DEL', lk, key('cust-idents', from), key('cust-identinfo', from),
    key('cust-merged', from), key('cust-tags', from), key('cust-attrs', from))

  local lopen = redis.call('GET', key('open', from))
  if not lopen then
    return nil
  end
  redis.call('DEL', key('open', from))
  local wopen = redis.call('GET', key('open', into))
  if not wopen then
    -- The survivor had none: the conversation moves over and stays open.
    redis.call('SET', key('open', into), lopen)
    if redis.call('EXISTS', key('conv', lopen)) == 1 then
      redis.call('HSET', key('conv', lopen), 'customer_id', into, 'updated_at', now)
    end
    return nil
  end
  if redis.call('EXISTS', key('conv', lopen)) == 0 then
    return nil
  end
  -- Both had one: the messages move into the survivor's, the other closes (`merged`).
  local moved = redis.call('LRANGE', key('conv-msgs', lopen), 0, -1)
  push_all(key('conv-msgs', wopen), moved)
  trim_messages(wopen)
  redis.call('DEL', key('conv-msgs', lopen))
  if redis.call('EXISTS', key('conv', wopen)) == 1 then
    redis.call('HINCRBY', key('conv', wopen), 'message_count', #moved)
  end
  redis.call('HSET', key('conv', lopen), 'merged_into', wopen)
  local released, err, bot = close_conversation(lopen, 'merged', now)
  if err then
    return nil
  end
  redis.call('HSET', key('conv', lopen), 'customer_id', into)
  return lopen, released or bot or false
end

-- Owners this request may merge: strong keys always, weak keys only when explicit.
-- Each key's owner as it changes below (false: none), so no key is looked up twice.
local merging = {}
local weak_owner = nil
local owner_now = {}
for i = 1, n do
  local o = owner_of(idents[i])
  owner_now[idents[i]] = o or false
  if o then
    if strengths[i] == 'strong' or explicit then
      merging[#merging + 1] = { o, idents[i] }
    elseif weak_owner == nil then
      weak_owner = o
    end
  end
end
local owners, seen = {}, {}
for _, m in ipairs(merging) do
  if not seen[m[1]] then
    seen[m[1]] = true
    owners[#owners + 1] = m[1]
  end
end
-- The oldest profile (first_seen, then id) survives.
local first_seen = {}
if #owners > 1 then
  for _, o in ipairs(owners) do
    first_seen[o] = redis.call('HGET', key('cust', o), 'first_seen')
  end
end
table.sort(owners, function(a, b)
  local fa, fb = first_seen[a], first_seen[b]
  if fa ~= fb then
    if not fa then
      return true
    end
    if not fb then
      return false
    end
    return lt(fa, fb)
  end
  return lt(a, b)
end)

local winner, created = owners[1] or weak_owner, false
local ck
-- The survivor's last_seen and display_name, as far as known (re-read after a merge).
local cur = {}
if not winner then
  winner, created = new_id, true
  ck = key('cust', winner)
  redis.call('HSET', ck, 'id', winner, 'tenant', tenant, 'first_seen', now, 'last_seen', now,
    'created_by', source)
  -- Its entry in the index erase_quiet_customers sweeps (store.customer_retention_days).
  redis.call('ZADD', P .. ':quiet', 0, now .. '|' .. winner)
  if has_name then
    redis.call('HSET', ck, 'display_name', name)
  end
  cur = { now, has_name and name or false }
else
  ck = key('cust', winner)
  local w = redis.call('HMGET', ck, 'id', 'created_by', 'last_seen', 'display_name')
  if not w[1] then
    return not_found('customer', winner)
  end
  created = source ~= '' and w[2] == source
  cur = { w[3], w[4] }
end

local merges, closed = {}, {}
-- Profiles merged away (their keys now belong to the survivor).
local lost = {}
for i = 2, #owners do
  local loser = owners[i]
  if redis.call('EXISTS', key('cust', loser)) == 1 then
    lost[loser] = true
  end
  local via, vseen = {}, {}
  for _, m in ipairs(merging) do
    if m[1] == loser and not vseen[m[2]] then
      vseen[m[2]] = true
      via[#via + 1] = m[2]
    end
  end
  table.sort(via, lt)
  local c, holder = merge_customers(loser, winner)
  if c then
    closed[#closed + 1] = { conv_reply(c), holder }
  end
  merges[#merges + 1] = { loser, winner, via }
  if noted then
    note('merged', now, loser, cjson.encode(via))
    if c then
      note('closed', now, c, holder)
    end
  end
end
if #merges > 0 then
  for ident, o in pairs(owner_now) do
    if o and lost[o] then
      owner_now[ident] = winner
    end
  end
  cur = redis.call('HMGET', ck, 'last_seen', 'display_name')
end

local linked = {}
local ik, info = key('cust-idents', winner), key('cust-identinfo', winner)
for i = 1, n do
  local ident, strength = idents[i], strengths[i]
  local o = owner_now[ident]
  local listed = true
  if (not o) or (explicit and o ~= winner) then
    redis.call('SET', key('ident', ident), winner)
    owner_now[ident] = winner
    linked[#linked + 1] = ident
  elseif o ~= winner then
    -- A weak key of another profile, not merged implicitly: it stays with its owner and is not
    -- listed on this profile too.
    listed = false
  end
  if listed then
    local held = redis.call('HGET', info, ident)
    if not held then
      redis.call('RPUSH', ik, ident)
      redis.call('HSET', info, ident, strength .. '|' .. now)
    elseif explicit then
      local sep = string.find(held, '|', 1, true)
      redis.call('HSET', info, ident, strength .. string.sub(held, sep or (#held + 1)))
    end
  end
end

if not cur[1] or lt(cur[1], now) then
  redis.call('HSET', ck, 'last_seen', now)
end
if not cur[2] and has_name then
  redis.call('HSET', ck, 'display_name', name)
end
local profile = false
if created or #merges > 0 or not profile_if_announced then
  profile = customer_reply(winner)
end
return { 'ok', created and 1 or 0, profile, merges, linked, closed, winner }
