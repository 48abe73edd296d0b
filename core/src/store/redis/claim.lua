-- claim_key: SET NX PX that answers the holder's value. KEYS[1] the key; ARGV value, ttl ms.
local held = redis.call('GET', KEYS[1])
if held then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
