"""The bridge's Redis side: claim, ack, delay, dead-letter and recovery, each one atomic Lua script
(:mod:`raysys.queue.scripts`).

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
delayed set, a dead letter or back to its queue), or after it: a light job's SUCCESS may be stored by the
thread that ran it just before (:func:`raysys.queue.run_worker.publish_early`). So a crash at any point loses
nothing; a stored SUCCESS is never overwritten, and a job whose SUCCESS is stored is acked without running
again.
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
from raysys.queue.scripts import APPLY, CLAIM, DUE, HEAD_RESULT, MOVE_ONE, REQUEUE, REQUEUE_DEAD


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
        self._head_sha: str | None = None  # HEAD_RESULT, loaded on a waiter's connection at its first use

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

    async def block_claim(self, list_name: str, timeout: float,
                          conn: aioredis.Redis) -> tuple[bytes | None, dict[str, bytes | None]]:
        """BLMOVE one message from ``list_name`` into its in-flight list (on a dedicated connection), and in the
        same round trip the stored result of the message then at the head of that list (:data:`HEAD_RESULT`):
        ``(raw or None, {id: stored result or None})``, the mapping empty when the head's result is unknown.
        """
        inflight = self.inflight[list_name]
        if self._head_sha is None:
            self._head_sha = await conn.script_load(HEAD_RESULT)
        async with conn.pipeline(transaction=False) as pipe:
            pipe.blmove(list_name, inflight, timeout, "RIGHT", "LEFT")
            pipe.evalsha(self._head_sha, 1, inflight, RESULT_KEY_PREFIX)
            raw, head = await pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise raw
        if isinstance(head, Exception):  # NOSCRIPT (Redis restarted or flushed its scripts): load it next time
            self._head_sha = None
            return raw, {}
        if raw is None or not head:
            return raw, {}
        return raw, {head[0].decode("utf-8", "replace"): head[1]}

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
        """The stored results of ``ids``; None for each where Redis cannot be read (the result write still
        refuses to overwrite a SUCCESS, so a job run again meanwhile changes nothing)."""
        if not ids:
            return []
        try:
            return await self.redis.mget([keys.result_key(i) for i in ids])
        except (RedisError, OSError):
            return [None] * len(ids)

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
