-- route_inbound: claim_key, resolve_customer, record_inbound and assign_queued as one script.
-- core/src/store/redis.rs prepends the prelude and each of those scripts wrapped as a function
-- of its ARGV (claim_key, resolve_customer, record_inbound, assign_queued), so this file only
-- chains them.
-- ARGV: prefix, then three sections, each its length followed by the ARGV of one step:
-- claim_key's, resolve_customer's and record_inbound's (whose customer fields are replaced by
-- the resolved customer here). Every step runs at the same `now` (resolve_customer's).
-- Reply: {'dup', holder} when another envelope holds the claim (nothing else done)
-- | {'routed', resolve_customer reply, record_inbound reply, assign_queued reply}
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
local assignments = {}
if conv_field(conv, 'status') == 'queued' then
  assignments = assign_queued({ P, conv_field(conv, 'pool'), now })
end
return { 'routed', resolution, record, assignments }
