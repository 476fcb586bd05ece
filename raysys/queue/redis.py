"""The bridge's Redis side: claim, ack, delay, dead-letter and recovery, each one atomic Lua script.

Keys (``{p}`` is ``settings.key_prefix``; queue lists and results carry no prefix so Celery agrees):

- ``<list>``                              a queue's list (``<queue>`` or ``<queue>\\x06\\x16<step>``);
                                          producers LPUSH, consumers take from the right.
- ``{p}raysys:inflight:<consumer>:<list>`` messages ``<consumer>`` took from ``<list>`` and has not
                                          acked; LPUSHed on claim, LREMed on ack, pushed back to the
                                          right end of ``<list>`` on recovery (so they run next).
- ``{p}raysys:consumers``                 hash consumer -> last heartbeat (unix seconds, for display only).
- ``{p}raysys:alive:<consumer>``          liveness, set by each heartbeat with a TTL; a consumer whose key
                                          Redis expired is dead (no cross-host clock comparison).
- ``{p}raysys:consumer-queues``           hash consumer -> JSON list of the lists it consumes.
- ``{p}raysys:delayed``                   sorted set of ``<list>\\x00<raw message>`` scored by due time
                                          (eta/countdown and retry backoff).
- ``{p}raysys:applied:<token>``           marks an applied batch of transitions (a retried batch is a no-op).
- ``{p}raysys:revoked``                   sorted set of revoked job ids (Celery ``revoke``) by revoke time.
- ``_kombu.binding.<queue>``               kombu's binding of exchange ``<queue>`` to the queue, declared as a
                                          Celery worker declares it (exchange-routed producers need it).
- ``<queue>.dead``                        dead letters, JSON ``{"reason", "id", "task", "queue", "message", ...}``,
                                          newest first, trimmed to DEAD_LETTER_MAX.
- ``{p}raysys:job-tenant:<id>``           owner of an HTTP job (read here: a callback never takes its id).
- ``celery-task-meta-<id>``               result value (SETEX) and pub/sub channel (PUBLISH).

A message leaves an in-flight list only in the same script that stores its result (or moves it to the
delayed set, a dead letter or back to its queue), so a crash at any point loses nothing; a stored
SUCCESS is never overwritten, and a job whose SUCCESS is stored is acked without running again.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ExecAbortError, RedisError, ResponseError

from raysys.config import Settings
from raysys.constants import (
    ALIVE_PREFIX,
    APPLIED_PREFIX,
    CONSUMER_QUEUES_KEY,
    CONSUMERS_KEY,
    DEAD_SUFFIX,
    DELAYED_KEY,
    INFLIGHT_PREFIX,
    JOB_TENANT_PREFIX,
    KOMBU_BINDING,
    KOMBU_BINDING_PERMANENT,
    PRIORITY_SEP,
    RESULT_KEY_PREFIX,
    REVOKED_KEY,
)
from raysys.queue import keys, results

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
APPLY = """
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
    local cur = redis.pcall('GET', key)
    if type(cur) == 'string' and string.find(string.sub(cur, 1, 40), '"status": *"SUCCESS"') then
      skipped = skipped + 1
    else
      run('SETEX', key, ARGV[i + 3], ARGV[i + 2])
      run('PUBLISH', key, ARGV[i + 2])
    end
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


class NotApplied(RedisError):
    """Redis refused a batch's first write (out of memory under ``maxmemory``, or read-only): nothing of the
    batch was written, its jobs are still in flight; apply it again later."""


@dataclass
class Applied:
    """What :meth:`Broker.apply` did: results not written because a SUCCESS was stored (``skipped``), dead
    letters trimmed from full dead-letter lists, ids of ``C``/``N`` ops refused because another job uses
    them, and the errors of single ops (a key of the wrong type)."""

    skipped: int = 0
    trimmed: int = 0
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


SOCKET_TIMEOUT = 30.0  # seconds a bridge waits for any one Redis reply (its commands take milliseconds)


class Ops:
    """A batch of job transitions applied by one :data:`APPLY` call (``acks`` lists what it acks)."""

    __slots__ = ("keys", "_kidx", "argv", "count", "acks", "prefix", "dead_max", "chosen")

    def __init__(self, prefix: str = "", dead_max: int = 0) -> None:
        """``prefix``: the settings' key prefix; ``dead_max``: newest dead letters kept per queue (0: all)."""
        self.keys: list[str] = [f"{prefix}{APPLIED_PREFIX}{uuid.uuid4().hex}"]  # KEYS[1]: the batch's token
        self._kidx: dict[str, int] = {}
        self.argv: list[Any] = []
        self.count = 0
        self.acks: list[tuple[str, bytes]] = []
        self.prefix = prefix
        self.dead_max = dead_max
        self.chosen: set[str] = set()  # ids published or failed with :meth:`publish_new`/:meth:`result_new`

    def __len__(self) -> int:
        return self.count

    def _k(self, key: str) -> int:
        idx = self._kidx.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._kidx[key] = len(self.keys)
        return idx

    def result(self, task_id: str, value: str, ttl: int) -> None:
        self.argv += ["R", self._k(keys.result_key(task_id)), value, ttl]
        self.count += 1

    def result_new(self, task_id: str, value: str, ttl: int, then: Sequence[tuple[str, str | bytes]] = ()) -> bool:
        """Store a result for an id a message named for another job (a chord part's), only if no result and
        no owner is recorded for it: never over another job's state; and only then publish the messages
        ``then`` (``(list, raw)``: a failed chord body's errbacks). False if this batch already has it."""
        if task_id in self.chosen:
            return False
        self.chosen.add(task_id)
        self.argv += ["C", self._k(keys.result_key(task_id)), self._k(self.owner_key(task_id)), value, ttl]
        for list_name, raw in then:
            self.argv += ["W", self._k(list_name), raw]
        self.count += 1 + len(then)
        return True

    def owner_key(self, task_id: str) -> str:
        return f"{self.prefix}{JOB_TENANT_PREFIX}{task_id}"

    def ack(self, inflight: str, raw: bytes) -> None:
        self.argv += ["A", self._k(inflight), raw]
        self.acks.append((inflight, raw))
        self.count += 1

    def publish(self, list_name: str, raw: str | bytes) -> None:
        self.argv += ["P", self._k(list_name), raw]
        self.count += 1

    def publish_new(self, task_id: str, list_name: str, raw: str | bytes, dead_queue: str, dead: str) -> bool:
        """Publish a message whose id its producer chose (a callback's ``task_id``) only if that id is unused
        (no result, no owner); else add the dead letter ``dead`` to ``dead_queue``. False (nothing added) if
        this batch already publishes that id."""
        if task_id in self.chosen:
            return False
        self.chosen.add(task_id)
        self.argv += ["N", self._k(keys.result_key(task_id)), self._k(self.owner_key(task_id)),
                      self._k(list_name), raw, self._k(f"{dead_queue}{DEAD_SUFFIX}"), dead]
        self.count += 1
        return True

    def push_front(self, list_name: str, raw: str | bytes) -> None:
        self.argv += ["F", self._k(list_name), raw]
        self.count += 1

    def delay(self, delayed_key: str, due: float, list_name: str, raw: str | bytes) -> None:
        if not math.isfinite(due):
            raise ValueError(f"due time must be finite, got {due!r}")
        member = (list_name.encode() + b"\x00" + (raw.encode() if isinstance(raw, str) else raw))
        self.argv += ["Z", self._k(delayed_key), repr(due), member]
        self.count += 1

    def dead(self, queue: str, entry: str) -> None:
        self.argv += ["D", self._k(f"{queue}{DEAD_SUFFIX}"), entry, self.dead_max]
        self.count += 1

    @property
    def token(self) -> str:
        return self.keys[0]

    def forget(self, token: str) -> None:
        """Delete an earlier batch's token (its reply came back, so it will never be re-sent). Not counted:
        it does not make a batch worth applying on its own."""
        self.argv += ["X", self._k(token)]


def dead_entry(reason: str, queue: str, raw: bytes | str, *, task_id: str | None = None, task: str | None = None,
               retries: int | None = None, consumer: str | None = None, source: str | None = None) -> str:
    """The JSON kept in ``<queue>.dead``: why, when, which job, and the original message to requeue."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return json.dumps({"reason": reason, "id": task_id, "task": task, "queue": queue, "list": source or queue,
                       "retries": retries, "consumer": consumer, "at": results.now_iso(), "message": text})


class Broker:
    """Async Redis operations of one consumer (one QueueBridge). All methods may raise redis errors."""

    def __init__(self, settings: Settings, consumer: str, queues: tuple[str, ...]) -> None:
        self.settings = settings
        self.consumer = consumer
        self.queues = tuple(queues)
        p = settings.key_prefix
        self.prefix = p
        self.lists = keys.lists_in_order(self.queues)
        self.list_queue = {name: q for q in self.queues for name in keys.lists_in_order([q])}
        self.inflight = {name: self.inflight_key(consumer, name) for name in self.lists}
        self.consumers_key = p + CONSUMERS_KEY
        self.consumer_queues_key = p + CONSUMER_QUEUES_KEY
        self.delayed_key = p + DELAYED_KEY
        self.revoked_key = p + REVOKED_KEY
        self.redis = self.connect()
        self._claim = self.redis.register_script(CLAIM)
        self._apply = self.redis.register_script(APPLY)
        self._due = self.redis.register_script(DUE)
        self._requeue = self.redis.register_script(REQUEUE)
        self._requeue_dead = self.redis.register_script(REQUEUE_DEAD)
        self.alive_key = self.alive_key_of(consumer)
        # Seconds this consumer counts as alive after a heartbeat (the liveness key's TTL, which Redis' own
        # clock expires): CONSUMER_TIMEOUT_SECONDS, and never less than two heartbeats.
        self.alive_ttl = max(settings.consumer_timeout_seconds, 2 * min(settings.heartbeat_seconds, 1.0))
        self.beats = 0
        self._move_one = self.redis.register_script(MOVE_ONE)

    def connect(self, **kwargs: Any) -> aioredis.Redis:
        """A client of this consumer (named ``raysys:<consumer>`` in ``CLIENT LIST``).

        redis-py's automatic retry stays off: a claim re-sent after its reply was lost would claim again
        and strand the first batch unseen, so every error must reach the bridge (which reconciles). A
        socket timeout turns a silently dead connection (a partition without a reset) into such an error
        instead of a bridge waiting forever; every command of the bridge is quick or safe to re-run.
        """
        options: dict[str, Any] = {
            "health_check_interval": 10, "socket_keepalive": True, "socket_connect_timeout": 10,
            "socket_timeout": SOCKET_TIMEOUT, "retry": Retry(NoBackoff(), 0), "client_name": f"raysys:{self.consumer}",
        }
        options.update(kwargs)
        return aioredis.Redis.from_url(self.settings.redis_url, **options)

    def inflight_key(self, consumer: str, list_name: str) -> str:
        return f"{self.prefix}{INFLIGHT_PREFIX}{consumer}:{list_name}"

    async def close(self) -> None:
        await self.redis.aclose()

    async def claim(self, light_free: int, heavy_free: dict[str, int], light_names: list[str]) -> list[tuple[str, bool, bytes]]:
        """Move up to the free slots' worth of messages into in-flight lists, in Celery's priority order.

        Returns ``(source list, predicted light, raw)`` per message.
        """
        n = len(self.lists)
        keys: list[str] = []
        for name in self.lists:
            keys += [name, self.inflight[name]]
        qindex = {q: i + 1 for i, q in enumerate(self.queues)}
        argv: list[Any] = [max(0, light_free), n]
        argv += [qindex[self.list_queue[name]] for name in self.lists]
        argv += [max(0, heavy_free.get(q, 0)) for q in self.queues]
        argv += ["|", *light_names]
        flat = await self._claim(keys=keys, args=argv)
        return [(self.lists[int(flat[i]) - 1], bool(int(flat[i + 1])), flat[i + 2]) for i in range(0, len(flat), 3)]

    async def block_claim(self, list_name: str, timeout: float, conn: aioredis.Redis) -> bytes | None:
        """BLMOVE one message from ``list_name`` into its in-flight list (on a dedicated connection)."""
        return await conn.blmove(list_name, self.inflight[list_name], timeout, "RIGHT", "LEFT")

    def alive_key_of(self, consumer: str) -> str:
        return f"{self.prefix}{ALIVE_PREFIX}{consumer}"

    async def apply(self, ops: Ops) -> Applied:
        """Apply ``ops`` atomically, all or nothing (see :data:`APPLY`).

        Raises:
            NotApplied: Redis refused the batch's first write (OOM under ``maxmemory``, MISCONF, READONLY):
                nothing was written; apply the same ``ops`` again later.
            RedisError, OSError: the call failed; applying the same ``ops`` again is safe (its token).
        """
        if not ops.count:
            return Applied()
        out = await self._apply(keys=ops.keys, args=ops.argv)
        text = [e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e) for e in out[4:]]
        if int(out[1]) == -2:
            raise NotApplied(text[0] if text else "write refused")
        n_refused = int(out[3])
        refused = [k.removeprefix(RESULT_KEY_PREFIX) for k in text[:n_refused]]
        return Applied(skipped=int(out[0]), trimmed=int(out[2]), refused=refused, errors=text[n_refused:])

    async def inflight_contents(self) -> dict[str, list[bytes]]:
        """What this consumer's in-flight lists hold in Redis, per source list."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in self.lists:
                pipe.lrange(self.inflight[name], 0, -1)
            values = await pipe.execute()
        return {name: v for name, v in zip(self.lists, values, strict=True) if v}

    async def requeue_one(self, list_name: str, raw: bytes) -> bool:
        """Move one copy of ``raw`` from this consumer's in-flight list back to the consumer end of its list."""
        return bool(await self._move_one(keys=[self.inflight[list_name], list_name], args=[raw, raw, "consumer"]))

    async def revoke(self, ids: list[str], now: float, keep: float) -> None:
        """Remember revoked ids (shared by every bridge, and by bridges started later) for ``keep`` seconds."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.revoked_key, dict.fromkeys(ids, now))
            pipe.zremrangebyscore(self.revoked_key, "-inf", now - keep)
            await pipe.execute()

    async def revoked_since(self, since: float) -> dict[str, float]:
        rows = await self.redis.zrangebyscore(self.revoked_key, since, "+inf", withscores=True)
        return {k.decode("utf-8", "replace"): float(v) for k, v in rows}

    async def results(self, ids: list[str]) -> list[bytes | None]:
        if not ids:
            return []
        return await self.redis.mget([keys.result_key(i) for i in ids])

    async def move_due(self, limit: int = 500) -> tuple[int, float | None]:
        moved, nxt = await self._due(keys=[self.delayed_key], args=[repr(time.time()), limit])
        nxt = float(nxt)
        return int(moved), (None if nxt < 0 else nxt)

    async def heartbeat(self) -> bool:
        """Mark this consumer alive, and bind its queues as a Celery worker declares them (kombu's
        ``_kombu.binding.<exchange>`` sets), so a producer that publishes through an exchange and routing
        key (``send_task(..., exchange="ingest", routing_key="ingest")``) is not silently dropped by kombu.

        Liveness is the key ``{p}raysys:alive:<consumer>`` with a TTL of ``alive_ttl`` seconds: Redis' clock
        expires it, so no host compares its wall clock with another's. The consumers hash keeps the last
        heartbeat's time for people to read (``raysys status``), never to decide liveness.

        Returns False when this consumer's key had expired since its previous heartbeat (it stalled longer
        than its TTL, and a survivor may have requeued the jobs it holds), else True.
        """
        now = repr(time.time())
        ttl_ms = int(self.alive_ttl * 1000)
        # PEXPIRE first: it never needs memory, so a consumer stays alive while Redis refuses writes at
        # maxmemory (its jobs cannot finish then, and must not be requeued to run twice).
        lapsed = not await self.redis.pexpire(self.alive_key, ttl_ms)
        if lapsed:
            await self.redis.set(self.alive_key, now, px=ttl_ms)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.consumers_key, self.consumer, now)
                pipe.hset(self.consumer_queues_key, self.consumer, json.dumps(self.lists))
                for queue in self.queues:
                    member = f"{queue}{PRIORITY_SEP}{PRIORITY_SEP}{queue}"  # routing key, pattern, queue
                    pipe.sadd(f"{KOMBU_BINDING}{queue}", member)
                    pipe.sadd(f"{KOMBU_BINDING_PERMANENT}{queue}", member)
                await pipe.execute()
        except ResponseError as exc:  # OOM: the registration is refreshed next time; liveness is kept above
            if "OOM" not in str(exc) and not isinstance(exc, ExecAbortError):
                raise
        self.beats += 1
        return self.beats == 1 or not lapsed

    async def requeue_consumer(self, consumer: str, lists: list[str] | None = None) -> int:
        """Give every message ``consumer`` holds back to its queue; returns how many."""
        if lists is None:
            raw = await self.redis.hget(self.consumer_queues_key, consumer)
            lists = json.loads(raw) if raw else list(self.lists)
        total = 0
        for name in lists:
            total += int(await self._requeue(keys=[self.inflight_key(consumer, name), name]))
        return total

    async def recover_dead(self) -> list[tuple[str, int]]:
        """Requeue the in-flight messages of every other consumer whose liveness key has expired, and forget
        it: ``[(consumer, messages requeued)]``. A consumer that beats again before its turn keeps its jobs
        (the check and the requeue are one script)."""
        consumers = [c.decode() for c in await self.redis.hkeys(self.consumers_key)]
        others = [c for c in consumers if c != self.consumer]
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for consumer in others:
                pipe.exists(self.alive_key_of(consumer))
            alive = await pipe.execute()
        out = []
        for consumer, live in zip(others, alive, strict=True):
            if live:
                continue
            n = int(await self._requeue_dead(
                keys=[self.alive_key_of(consumer), self.consumers_key, self.consumer_queues_key],
                args=[consumer, f"{self.prefix}{INFLIGHT_PREFIX}"]))
            if n >= 0:  # -1: it beat again meanwhile
                out.append((consumer, n))
        return out

    async def deregister(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.consumers_key, self.consumer)
            pipe.hdel(self.consumer_queues_key, self.consumer)
            pipe.delete(self.alive_key)
            await pipe.execute()

    async def depths(self) -> dict[str, int]:
        """Messages waiting per queue (all its priority lists)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in self.lists:
                pipe.llen(name)
            sizes = await pipe.execute()
        out = dict.fromkeys(self.queues, 0)
        for name, size in zip(self.lists, sizes, strict=True):
            out[self.list_queue[name]] += int(size)
        return out
