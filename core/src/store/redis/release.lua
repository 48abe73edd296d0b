-- release_key: deletes a claim only while it still holds the claimer's value. ARGV: prefix, the
-- key (already prefixed), value. Reply: 1 if deleted, else 0.
if redis.call('GET', ARGV[2]) == ARGV[3] then
  return redis.call('DEL', ARGV[2])
end
return 0
