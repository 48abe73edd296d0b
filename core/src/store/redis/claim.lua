-- claim_key: SET NX PX that answers the holder's value. ARGV: the key (already prefixed),
-- value, ttl ms. Reply: the holder's value, or false when the claim is ours.
local held = redis.call('GET', ARGV[1])
if held then
  return held
end
redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
return false
