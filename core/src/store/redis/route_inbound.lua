-- route_inbound: claim_key, resolve_customer, record_inbound and assign_queued as one script.
-- core/src/store/redis.rs prepends the prelude and each of those scripts wrapped as a function
-- of its ARGV (claim_key, resolve_customer, record_inbound, assign_queued), so this file only
-- chains them.
-- ARGV: prefix, then three sections, each its length followed by the ARGV of one step:
-- claim_key's, resolve_customer's and record_inbound's (whose customer fields are replaced by
-- the resolved customer here), then the pools whose assignments choose the least busy agent
-- (`,`-separated). Every step runs at the same `now` (resolve_customer's).
-- Reply: {'dup', holder} when another envelope holds the claim (nothing else done)
-- | {'routed', resolve_customer reply, record_inbound reply, assignments}, where assignments
-- are assign_queued's reply, plus, when this envelope held the claim already (a retry), the
-- other conversations its first routing assigned that are still with the same agent.
-- | the error reply of the step that failed.

local pos = 2
local function section()
  local n = tonumber(ARGV[pos])
  local args = {}
  for i = 1, n do
    args[i] = ARGV[pos + i]
  end
  pos = pos + n + 1
  return args
end
local claim_args, resolve_args, record_args = section(), section(), section()
-- Then the pools that choose the least busy agent, `,`-separated.
local least_busy_pools = ',' .. (ARGV[pos] or '') .. ','

local env_id, now = claim_args[2], resolve_args[6]
local holder = claim_key(claim_args)
if holder and holder ~= env_id then
  return { 'dup', holder }
end

local resolution = resolve_customer(resolve_args)
if resolution[1] == 'err' then
  return resolution
end
-- The reply's seventh element is the customer id.
record_args[3], record_args[4] = 'canonical', resolution[7]

local record = record_inbound(record_args)
if record[1] == 'err' then
  return record
end
local conv = record[3]
local conv_id = conv_field(conv, 'id')
local assignments = {}
if conv_field(conv, 'status') == 'queued' then
  local pool = conv_field(conv, 'pool')
  local least_busy = string.find(least_busy_pools, ',' .. pool .. ',', 1, true) and '1' or ''
  assignments = assign_queued({ P, pool, now, '', least_busy })
end
-- Other conversations this routing assigned (queued ahead of this one) are remembered as long as
-- the claim, so that a retry (this envelope holds the claim already: its first reply or its
-- events were lost) announces them again, if they are still assigned to that agent.
local others_key = key('routed-assigned', env_id)
if holder == env_id then
  local seen = {}
  for _, a in ipairs(assignments) do
    seen[conv_field(a[1], 'id')] = true
  end
  local others = redis.call('LRANGE', others_key, 0, -1)
  for i = 1, #others, 2 do
    local id, agent = others[i], others[i + 1]
    local c = conv_reply(id)
    if not seen[id] and conv_field(c, 'status') == 'assigned'
      and conv_field(c, 'agent_id') == agent then
      assignments[#assignments + 1] = { c, agent }
    end
  end
else
  local remembered = false
  for _, a in ipairs(assignments) do
    local id = conv_field(a[1], 'id')
    if id ~= conv_id then
      redis.call('RPUSH', others_key, id, a[2])
      remembered = true
    end
  end
  if remembered then
    redis.call('PEXPIRE', others_key, claim_args[3])
  end
end
return { 'routed', resolution, record, assignments }
