-- Shared by every Switchyard store script (prepended by core/src/store/redis.rs, which also
-- defines MAX_MESSAGES and CONV_FIELDS above this line). ARGV[1] is the key prefix; every key is
-- `<prefix>:<family>:<id>`, and no family name contains `:`, so families never collide whatever
-- the ids contain. Timestamps are fixed-width RFC 3339 strings with nanoseconds, so comparing
-- them byte-wise compares the instants.

local P = ARGV[1]

local function key(family, id)
  return P .. ':' .. family .. ':' .. id
end

-- Byte-wise a < b (Lua's own `<` on strings follows the server's locale).
local function lt(a, b)
  if a == b then
    return false
  end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- RPUSH in chunks (unpack has a stack limit).
local function push_all(k, items)
  local i = 1
  while i <= #items do
    local j = math.min(i + 999, #items)
    redis.call('RPUSH', k, unpack(items, i, j))
    i = j + 1
  end
end

local function trim_messages(conv)
  redis.call('LTRIM', key('conv-msgs', conv), -MAX_MESSAGES, -1)
end

-- Deletes a conversation with its messages and the `P:msg` record of each message id (a copy
-- of one that arrives later is a new message).
local function delete_conversation(id)
  local ck, mk = key('conv', id), key('conv-msgs', id)
  for _, envelope in ipairs(redis.call('LRANGE', mk, 0, -1)) do
    local ok, e = pcall(cjson.decode, envelope)
    if ok and type(e) == 'table' and type(e.id) == 'string' then
      redis.call('DEL', key('msg', e.id))
    end
  end
  redis.call('DEL', ck, mk)
end

-- The surviving profile of a customer id (merged-away ids redirect to their survivor).
local function canonical(id)
  for _ = 1, 64 do
    local nxt = redis.call('GET', key('redirect', id))
    if not nxt then
      break
    end
    id = nxt
  end
  return id
end

local function owner_of(ident)
  local o = redis.call('GET', key('ident', ident))
  if o then
    return canonical(o)
  end
  return nil
end

-- The conversation now holding messages recorded in `conv` (a conversation closed by a merge
-- handed its messages to the survivor's).
local function follow_merged(conv)
  for _ = 1, 64 do
    local nxt = redis.call('HGET', key('conv', conv), 'merged_into')
    if not nxt then
      break
    end
    conv = nxt
  end
  return conv
end

-- A conversation as replied to Rust: the values of CONV_FIELDS (defined with the reply's parser
-- in core/src/store/redis.rs), in order; all nil when it does not exist.
local function conv_reply(id)
  return redis.call('HMGET', key('conv', id), unpack(CONV_FIELDS))
end

-- Field `name` of a conv_reply.
local function conv_field(reply, name)
  for i, f in ipairs(CONV_FIELDS) do
    if f == name then
      return reply[i]
    end
  end
  return nil
end

local function agent_reply(id)
  return {
    redis.call('HGETALL', key('agent', id)),
    redis.call('LRANGE', key('agent-pools', id), 0, -1),
    redis.call('LRANGE', key('agent-skills', id), 0, -1),
    redis.call('LRANGE', key('agent-convs', id), 0, -1),
  }
end

local function customer_reply(id)
  return {
    redis.call('HGETALL', key('cust', id)),
    redis.call('LRANGE', key('cust-idents', id), 0, -1),
    redis.call('HGETALL', key('cust-identinfo', id)),
    redis.call('LRANGE', key('cust-merged', id), 0, -1),
    redis.call('LRANGE', key('cust-tags', id), 0, -1),
    redis.call('HGETALL', key('cust-attrs', id)),
  }
end

-- Domain errors are replies, not Lua errors; scripts return them before writing anything.
local function not_found(kind, id)
  return { 'err', 'not_found', kind, id }
end

local function conflict(code, message)
  return { 'err', 'conflict', code, message }
end

-- Queued conversations wait in one of their pool's queues, by their `priority` (absent: 0) and
-- the `skills` they ask for (a JSON array, sorted, each skill once; absent: none): priority 0
-- asking for none in `P:queue:{pool}`, any other in `P:sub-queue:{pool}|{sig}`, where the
-- queue's `sig` is `{priority}|{skills}` (queue_sig). The set `P:sub-queues:{pool}` names the
-- sub-queues that may be non-empty (assign_queued drops the empty ones). A sig of false names
-- `P:queue:{pool}`.
local function queue_sig(priority, skills)
  local p = tonumber(priority) or 0
  if p == 0 and not skills then
    return false
  end
  return p .. '|' .. (skills or '')
end

local function queue_key(pool, sig)
  if sig then
    return key('sub-queue', pool .. '|' .. sig)
  end
  return key('queue', pool)
end

-- Appends conversation `conv` to pool's queue `sig`, or puts it at the front with `front`.
local function enqueue(conv, pool, sig, front)
  redis.call(front and 'LPUSH' or 'RPUSH', queue_key(pool, sig), conv)
  if sig then
    redis.call('SADD', key('sub-queues', pool), sig)
  end
end

-- The sigs of pool's queues: false for `P:queue:{pool}`, then each sub-queue's, in byte order.
local function pool_queues(pool)
  local sigs = redis.call('SMEMBERS', key('sub-queues', pool))
  table.sort(sigs, lt)
  table.insert(sigs, 1, false)
  return sigs
end

-- Conversation `id` as a queue entry of pool's queue `sig`: {id, queued_at, priority, skills,
-- preferred agent, agent to pass over (false for none), seconds to accept an offer}, or nil when the entry is stale (the conversation was closed, moved,
-- or asks for another priority or skills since).
local function queue_entry(id, pool, sig)
  local c = redis.call('HMGET', key('conv', id), 'status', 'pool', 'skills', 'priority',
    'queued_at', 'preferred_agent', 'declined_by', 'offer_secs')
  if c[1] ~= 'queued' or c[2] ~= pool or queue_sig(c[4], c[3] or nil) ~= sig then
    return nil
  end
  return { id, c[5] or '', tonumber(c[4]) or 0, c[3] or false, c[6] or false, c[7] or false,
    tonumber(c[8]) or 0 }
end

-- Whether queue entry a comes before entry b: higher priority, then older, then lower id.
local function head_before(a, b)
  if a[3] ~= b[3] then
    return a[3] > b[3]
  end
  if a[2] ~= b[2] then
    return lt(a[2], b[2])
  end
  return lt(a[1], b[1])
end

-- Member of a pool's online-agent index: sorted byte-wise, it orders by idle_since, then id.
local function online_member(idle, id)
  return idle .. '|' .. id
end

-- The pool index `P:pool-online:{pool}` holds the agents of the pool that can take a
-- conversation now: online, with fewer conversations than their capacity. Choosing an agent
-- is then reading its first member, however many agents the pool has. Every change of an
-- agent's status, capacity, pools, idle_since or load goes through `unindex_agent` before and
-- `index_agent` after (or through `take_conversation`, which does both for one assignment).

-- Removes agent `id` from the indexes of its pools; returns its {status, idle_since}.
local function unindex_agent(id)
  local a = redis.call('HMGET', key('agent', id), 'status', 'idle_since')
  if a[1] == 'online' and a[2] then
    for _, p in ipairs(redis.call('LRANGE', key('agent-pools', id), 0, -1)) do
      redis.call('ZREM', key('pool-online', p), online_member(a[2], id))
    end
  end
  return a
end

-- Adds agent `id` to the indexes of its pools if it can take a conversation.
local function index_agent(id)
  local a = redis.call('HMGET', key('agent', id), 'status', 'idle_since', 'capacity')
  if a[1] == 'online' and a[2]
    and redis.call('LLEN', key('agent-convs', id)) < (tonumber(a[3]) or 0) then
    for _, p in ipairs(redis.call('LRANGE', key('agent-pools', id), 0, -1)) do
      redis.call('ZADD', key('pool-online', p), 0, online_member(a[2], id))
    end
  end
end

-- Hands conversation `conv` to agent `id`: its load grows, its idle_since becomes `now`, and it
-- stays in its pools' indexes only while it still has room. `a` is the agent's {status,
-- idle_since, capacity} when the caller has just read them (read here otherwise).
local function take_conversation(id, conv, now, a)
  local ak = key('agent', id)
  a = a or redis.call('HMGET', ak, 'status', 'idle_since', 'capacity')
  local load = redis.call('RPUSH', key('agent-convs', id), conv)
  if a[1] == 'online' then
    local room = load < (tonumber(a[3]) or 0)
    for _, p in ipairs(redis.call('LRANGE', key('agent-pools', id), 0, -1)) do
      local zk = key('pool-online', p)
      if a[2] then
        redis.call('ZREM', zk, online_member(a[2], id))
      end
      if room then
        redis.call('ZADD', zk, 0, online_member(now, id))
      end
    end
  end
  redis.call('HSET', ak, 'idle_since', now, 'updated_at', now)
  -- A conversation opened preferring the last agent makes its agent the customer's last
  -- (record_inbound reads it for their later ones); its own preference is used up.
  local ck = key('conv', conv)
  local c = redis.call('HMGET', ck, 'customer_id', 'remember_agent', 'preferred_agent',
    'declined_by')
  if c[1] and c[2] then
    redis.call('SET', key('last-agent', canonical(c[1])), id)
  end
  if c[3] or c[4] then
    redis.call('HDEL', ck, 'preferred_agent', 'declined_by')
  end
end

-- Pending offers (a conversation assigned from the queue of a pool whose agents must accept):
-- the conversation's `offered_at`, and its member `{offered_at}|{id}` in the sorted set
-- `P:offers` (every score 0, byte order = oldest first).
local function offer_member(offered_at, id)
  return offered_at .. '|' .. id
end

-- Clears conversation `id`'s pending offer, if any.
local function clear_offer(id)
  local ck = key('conv', id)
  local offered_at = redis.call('HGET', ck, 'offered_at')
  if offered_at then
    redis.call('ZREM', P .. ':offers', offer_member(offered_at, id))
    redis.call('HDEL', ck, 'offered_at')
  end
end

-- Conversations a bot holds, per pool, by their latest message either way: the lex-ordered
-- `P:bot-held:{pool}` of `{stamp}|{id}`, whose stamp the hash keeps as `bot_active`.
local function bot_touch(id, now)
  local ck = key('conv', id)
  local c = redis.call('HMGET', ck, 'pool', 'bot_active')
  local zk = key('bot-held', c[1])
  if c[2] then
    redis.call('ZREM', zk, c[2] .. '|' .. id)
  end
  redis.call('ZADD', zk, 0, now .. '|' .. id)
  redis.call('HSET', ck, 'bot_active', now)
end

local function bot_release(id)
  local ck = key('conv', id)
  local c = redis.call('HMGET', ck, 'pool', 'bot_active')
  if c[2] then
    redis.call('ZREM', key('bot-held', c[1]), c[2] .. '|' .. id)
    redis.call('HDEL', ck, 'bot_active')
  end
end

-- Takes a conversation away from its agent, its queue or its bot; returns the agent it left,
-- if any (a bot is not an agent record).
local function detach(id)
  local c = redis.call('HMGET', key('conv', id), 'status', 'agent_id', 'pool', 'skills',
    'priority')
  if c[1] == 'bot' then
    bot_release(id)
  elseif c[1] == 'assigned' then
    clear_offer(id)
    if c[2] and redis.call('EXISTS', key('agent', c[2])) == 1 then
      redis.call('LREM', key('agent-convs', c[2]), 0, id)
      index_agent(c[2])
      return c[2]
    end
  elseif c[1] == 'queued' and c[3] then
    redis.call('LREM', queue_key(c[3], queue_sig(c[5], c[4] or nil)), 0, id)
  end
  return nil
end

-- The bot holding conversation `id` whose status is `st`: its agent while the status is 'bot',
-- else nil. A bot is no agent record, so a close or transfer names it as the one it left.
local function bot_holder(id, st)
  return st == 'bot' and redis.call('HGET', key('conv', id), 'agent_id') or nil
end

-- Closes a conversation. Returns (released agent id or false, nil, the bot that held it or
-- nil) or (nil, error reply).
local function close_conversation(id, reason, now)
  local ck = key('conv', id)
  local st = redis.call('HGET', ck, 'status')
  if not st then
    return nil, not_found('conversation', id)
  end
  if st == 'closed' then
    return nil, conflict('conversation_closed', 'conversation `' .. id .. '` is already closed')
  end
  local bot = bot_holder(id, st)
  local released = detach(id)
  redis.call('HSET', ck, 'status', 'closed', 'closed_at', now, 'updated_at', now,
    'close_reason', reason)
  redis.call('HDEL', ck, 'preferred_agent', 'declined_by', 'offer_secs', 'remember_agent')
  -- The index expire_closed deletes closed conversations by (store.retention_days).
  redis.call('ZADD', P .. ':closed', 0, now .. '|' .. id)
  redis.call('HDEL', ck, 'agent_id')
  local cust = redis.call('HGET', ck, 'customer_id')
  if cust and redis.call('GET', key('open', cust)) == id then
    redis.call('DEL', key('open', cust))
  end
  return released or false, nil, bot
end


-- Presence (heartbeat_agent): an agent whose hash has `presence` = 'live' is presence-tracked
-- and present while `P:presence:{agent}` exists (set with the heartbeat's PX TTL). After its
-- session lapsed and was expired, `presence` is 'lapsed:{status it had}' until a heartbeat
-- resumes it or an explicit status replaces it. Agents without the field are never expired.
local function presence_lapsed(id)
  return redis.call('HGET', key('agent', id), 'presence') == 'live'
    and redis.call('EXISTS', key('presence', id)) == 0
end

-- Sets a live agent whose presence lapsed offline, out of every pool's online index (as
-- upsert_agent does), remembering its status for a resumed heartbeat. Conversations it holds
-- stay with it.
local function expire_presence(id, now)
  if not presence_lapsed(id) then
    return
  end
  local status = unindex_agent(id)[1]
  local ak = key('agent', id)
  if status == 'offline' or not status then
    redis.call('HDEL', ak, 'presence')
  else
    redis.call('HSET', ak, 'presence', 'lapsed:' .. status)
  end
  redis.call('HSET', ak, 'status', 'offline', 'updated_at', now)
end

-- Notes a change whose events its command may not have published yet (Store::unannounced;
-- Note::key and Note::detail in core/src/store/mod.rs): the sorted set `P:unannounced:notes`
-- holds each note's key `<now>|<kind>|<subject>`, all with score 0, so that they sort by time;
-- the hash `P:unannounced:detail` maps a key to its detail: the agent a close or a transfer took
-- the conversation from, the agent an offer was made to (`accepted`, `declined`,
-- `offer_expired`) or that left its customer `unanswered`, or a merge's keys (a JSON array).
local function note(kind, now, subject, detail)
  local member = now .. '|' .. kind .. '|' .. subject
  redis.call('ZADD', key('unannounced', 'notes'), 0, member)
  if detail then
    redis.call('HSET', key('unannounced', 'detail'), member, detail)
  end
end

-- Appends `item` under `id` to mailbox `name` unless the id is there already (1 if added, else
-- 0), drops the oldest items beyond `max_len`, and makes the mailbox expire `ttl` ms from now.
-- `P:mailbox:{name}` lists the ids, oldest first; `P:mailbox-items:{name}` maps id -> item.
local function mailbox_push(name, id, item, max_len, ttl)
  local ids_key, items_key = key('mailbox', name), key('mailbox-items', name)
  if redis.call('HEXISTS', items_key, id) == 1 then
    return 0
  end
  redis.call('RPUSH', ids_key, id)
  redis.call('HSET', items_key, id, item)
  while redis.call('LLEN', ids_key) > max_len do
    local oldest = redis.call('LPOP', ids_key)
    redis.call('HDEL', items_key, oldest)
  end
  redis.call('PEXPIRE', ids_key, ttl)
  redis.call('PEXPIRE', items_key, ttl)
  return 1
end
