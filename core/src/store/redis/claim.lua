-- claim_key, the first step of route_inbound (Store::claim_key itself sends SET NX PX, then GET
-- when the key is taken): SET NX PX that answers the holder's value. ARGV: the key (already
-- prefixed), value, ttl ms. Reply: the holder's value, or false when the claim is ours.
if redis.call('SET', ARGV[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return false
end
-- Taken (a script sees no key expire while it runs, so the holder is still there).
return redis.call('GET', ARGV[1])
