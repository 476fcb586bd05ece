"""The bridge's Lua scripts: each of its Redis operations that must be atomic is one script here.

:mod:`raysys.queue.redis` calls them (and says which keys they touch); each script's comment gives its KEYS,
ARGV and reply. Scripts run under Redis' script semantics: no other command runs in the middle of one.
"""

# Claim messages without going past the free slots.
# KEYS: for each source list i: KEYS[2i-1] the list, KEYS[2i] this consumer's in-flight list for it.
# ARGV[1] free light slots; ARGV[2] number of lists n; ARGV[3..2+n] the queue index of list i;
# ARGV[3+n..] free heavy slots per queue index (1-based), then "|" then the light task names.
# Within a list the order is kept: a message that does not fit stops that list.
# Returns a flat array: list index, 1 if classified light else 0, raw message, ...
CLAIM = """
local light_free = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local qidx = {}
for i = 1, n do qidx[i] = tonumber(ARGV[2 + i]) end
local heavy_free = {}
local light = {}
local j = 3 + n
while ARGV[j] ~= '|' do heavy_free[#heavy_free + 1] = tonumber(ARGV[j]); j = j + 1 end
for k = j + 1, #ARGV do light[ARGV[k]] = true end
local out = {}
for i = 1, n do
  local src, dst, q = KEYS[2 * i - 1], KEYS[2 * i], qidx[i]
  while light_free > 0 or heavy_free[q] > 0 do
    local raw = redis.call('LINDEX', src, -1)
    if not raw then break end
    local name = string.match(raw, '"task"%s*:%s*"([^"]*)"')
    local is_light = (name == nil) or (light[name] == true)
    if is_light then
      if light_free <= 0 then break end
      light_free = light_free - 1
    else
      if heavy_free[q] <= 0 then break end
      heavy_free[q] = heavy_free[q] - 1
    end
    redis.call('LMOVE', src, dst, 'RIGHT', 'LEFT')
    out[#out + 1] = i
    out[#out + 1] = is_light and 1 or 0
    out[#out + 1] = raw
  end
end
return out
"""

# Apply a batch of job transitions atomically. ARGV is a sequence of ops, each an opcode and its
# operands; keys are named by index into KEYS (so every key is declared). KEYS[1] is the batch's token:
# a batch whose token is already set was applied (its reply was lost to a dropped connection) and is
# not applied twice.
#   R key_i value ttl       store a result: SETEX + PUBLISH, unless a SUCCESS is stored already
#   C key_i owner_i value ttl  store a result only for an id nobody uses: no result stored and no owner
#                           (``{p}raysys:job-tenant:<id>``) recorded; else count it as refused
#   W key_i raw             LPUSH a message only if the last C op stored its result (a chord body's errbacks)
#   A key_i raw             ack: LREM one copy of raw from an in-flight list
#   P key_i raw             publish a message: LPUSH onto a queue list (as producers do)
#   N res_i owner_i key_i raw dead_i entry  publish a message under an id its producer chose (a callback's
#                           ``task_id``), only when that id has no result and no owner; else LPUSH the
#                           dead-letter ``entry`` instead (another job's id is never taken over)
#   F key_i raw             push back to the consumer end: RPUSH (runs next)
#   Z key_i score member    ZADD to the delayed set
#   D key_i entry max       LPUSH a dead-letter entry, keep the newest ``max`` (0: unbounded)
#   X key_i                 DEL (the token of the bridge's previous batch, whose reply it received)
# All or nothing under memory pressure: the token's SET is the script's first write, and Redis refuses
# a write that may grow memory (OOM under ``maxmemory``, also MISCONF, READONLY) only before a script's
# first write, never in the middle. So either that SET fails and nothing is written (the batch stays
# with the bridge and its jobs in flight, retried later), or every write below succeeds: a job is never
# acked while its result, retry or dead letter is lost.
# The other commands run under pcall: a key of the wrong type (a key an operator or producer misused)
# fails that one op, deterministically, never the batch.
# Returns {skipped results, status, dead letters trimmed, refused ids n, ids..., errors...}; status is 0
# applied, -1 applied before, -2 nothing applied (the reason is the next element).
# Lua shared by APPLY and PUBLISH_RESULTS: store and publish a result (SETEX + PUBLISH through ``call``) unless
# the key holds a SUCCESS already; false if it did.
STORE_RESULT = """
local function store_result(call, key, value, ttl)
  local cur = redis.pcall('GET', key)
  if type(cur) == 'string' and string.find(string.sub(cur, 1, 40), '"status": *"SUCCESS"') then return false end
  call('SETEX', key, ttl, value)
  call('PUBLISH', key, value)
  return true
end
"""

APPLY = STORE_RESULT + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, -1, 0, 0} end
local set = redis.pcall('SET', KEYS[1], '1', 'EX', 3600)
if type(set) == 'table' and set.err then return {0, -2, 0, 0, set.err} end
local i = 1
local skipped, trimmed = 0, 0
local wrote = false
local errors, refused = {}, {}
local function run(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then errors[#errors + 1] = r.err end
  return r
end
local function taken(res, owner)
  return redis.call('EXISTS', res) == 1 or redis.call('EXISTS', owner) == 1
end
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  if op == 'R' then
    if not store_result(run, key, ARGV[i + 2], ARGV[i + 3]) then skipped = skipped + 1 end
    i = i + 4
  elseif op == 'C' then
    wrote = not taken(key, KEYS[tonumber(ARGV[i + 2])])
    if wrote then
      run('SETEX', key, ARGV[i + 4], ARGV[i + 3])
      run('PUBLISH', key, ARGV[i + 3])
    else
      refused[#refused + 1] = key
    end
    i = i + 5
  elseif op == 'W' then
    if wrote then run('LPUSH', key, ARGV[i + 2]) end
    i = i + 3
  elseif op == 'A' then
    run('LREM', key, -1, ARGV[i + 2]); i = i + 3
  elseif op == 'P' then
    run('LPUSH', key, ARGV[i + 2]); i = i + 3
  elseif op == 'N' then
    if taken(key, KEYS[tonumber(ARGV[i + 2])]) then
      refused[#refused + 1] = key
      run('LPUSH', KEYS[tonumber(ARGV[i + 5])], ARGV[i + 6])
    else
      run('LPUSH', KEYS[tonumber(ARGV[i + 3])], ARGV[i + 4])
    end
    i = i + 7
  elseif op == 'F' then
    run('RPUSH', key, ARGV[i + 2]); i = i + 3
  elseif op == 'Z' then
    run('ZADD', key, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'D' then
    local n = run('LPUSH', key, ARGV[i + 2])
    local max = tonumber(ARGV[i + 3])
    if type(n) == 'number' and max > 0 and n > max then
      run('LTRIM', key, 0, max - 1)
      trimmed = trimmed + n - max
    end
    i = i + 4
  elseif op == 'X' then
    run('DEL', key); i = i + 2
  else
    errors[#errors + 1] = 'unknown op ' .. tostring(op); i = #ARGV + 1
  end
end
local out = {skipped, 0, trimmed, #refused}
for _, k in ipairs(refused) do out[#out + 1] = k end
for _, e in ipairs(errors) do out[#out + 1] = e end
return out
"""

# Store and publish the SUCCESS results of a light batch where it ran, before the bridge's batch acks its jobs
# (the R op of APPLY, without the batch around it). KEYS: result keys; ARGV: per key its value, then its TTL.
# A key holding a SUCCESS already is left alone. Returns how many were written.
PUBLISH_RESULTS = STORE_RESULT + """
local n = 0
for i, key in ipairs(KEYS) do
  if store_result(redis.call, key, ARGV[2 * i - 1], ARGV[2 * i]) then n = n + 1 end
end
return n
"""

# Move one entry from a list onto another, atomically: KEYS[1] the list holding ARGV[1], KEYS[2] the target;
# ARGV[2] what to push there, at ARGV[3] "consumer" (RPUSH: taken next) or "producer" (LPUSH: queued last).
# Returns 1 if moved. Gives back a message whose claim's reply was lost; requeues a dead letter (admin).
MOVE_ONE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  if ARGV[3] == 'consumer' then redis.call('RPUSH', KEYS[2], ARGV[2]) else redis.call('LPUSH', KEYS[2], ARGV[2]) end
  return 1
end
return 0
"""

# Move due delayed messages back to the consumer end of their lists.
# KEYS[1] the delayed set. ARGV[1] now, ARGV[2] max count.
# Returns {moved, next due score or -1}.
DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, '\\0', 1, true)
  if sep then
    redis.call('RPUSH', string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
  end
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, nxt[2]} end
return {#due, '-1'}
"""

# Give an in-flight list back to its queue: newest first onto the consumer end, so the oldest runs
# first. KEYS[1] the in-flight list, KEYS[2] the queue list. Returns how many moved.
REQUEUE = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""

# Requeue a dead consumer's in-flight lists and forget it, only if it is still dead: its liveness key
# (set by its heartbeat with a TTL; Redis' clock alone decides that it expired) is absent. One script, so
# a consumer that beats again meanwhile keeps what it holds. KEYS[1] its liveness key, KEYS[2] consumers
# hash, KEYS[3] consumer-queues hash. ARGV[1] consumer, ARGV[2] in-flight key prefix ({p}raysys:inflight:).
# Returns how many messages went back to their queues, or -1 if the consumer is alive.
REQUEUE_DEAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local raw = redis.call('HGET', KEYS[3], ARGV[1])
local ok, lists = pcall(cjson.decode, raw or '[]')
if not ok or type(lists) ~= 'table' then lists = {} end
local n = 0
for _, name in ipairs(lists) do
  if type(name) == 'string' then
    local inflight = ARGV[2] .. ARGV[1] .. ':' .. name
    while redis.call('LMOVE', inflight, name, 'LEFT', 'RIGHT') do n = n + 1 end
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""


# The stored result of the message at the head of an in-flight list (KEYS[1]; ARGV[1] the result key
# prefix). A waiter sends it in the same pipeline as its BLMOVE into that list, and Redis runs it right
# after the BLMOVE: the check "is a SUCCESS already stored for this job" costs no round trip of its own.
# Returns {id, stored result or false}, or false (empty list, no id): the id is the first "id" string in
# the message, which the bridge compares with the id it decodes (another claim may have pushed between).
HEAD_RESULT = """
local raw = redis.call('LINDEX', KEYS[1], 0)
if not raw then return false end
local id = string.match(string.sub(raw, 1, 65536), '"id"%s*:%s*"([%w_%.:%-]+)"')
if not id then return false end
return {id, redis.call('GET', ARGV[1] .. id)}
"""
