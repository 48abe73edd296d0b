-- claim_key, the first step of route_inbound (Store::claim_key itself sends SET NX PX, then GET
-- when the key is taken): SET NX PX that answers the holder's value. ARGV: the key (already
-- prefixed), value, ttl ms. Reply: the holder's value, or false when the claim is ours.
local held = redis.call('GET', ARGV[1])
if held then
  return held
end
redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
return false
