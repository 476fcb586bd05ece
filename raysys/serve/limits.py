"""Request limits shared by every API replica, kept in Redis: a rate per API key, slots per tenant.

- Rate: a generic cell rate algorithm (GCRA) per API key — ``API_RATE_LIMIT`` requests per second
  with bursts of ``API_RATE_BURST``. One key per API key holds its "theoretical arrival time".
- Slots: a counting semaphore per tenant and kind (requests in progress: ``API_TENANT_CONCURRENCY``;
  ``wait=true`` analytics: ``API_TENANT_WAIT_SLOTS``). A sorted set holds one member per holder,
  scored by its lease's end, so a replica that dies holding slots frees them when the lease ends.

One Lua script admits a request against both in one round trip (:meth:`Limits.admit`); it takes the
time from Redis (``TIME``), never from the replica, so replicas on different hosts share one clock. A refusal is :class:`Limited` (HTTP 429) with the seconds to wait (``Retry-After``).

Keys (prefix ``settings.key_prefix`` + :data:`raysys.constants.API_LIMIT_PREFIX`):
``rate:<sha256 of the API key>`` (string, expires when idle) and ``slots:<kind>:<tenant>`` (zset).
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from raysys.constants import API_LIMIT_PREFIX
from raysys.errors import RaysysError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from raysys.config import Settings

log = logging.getLogger("raysys.serve")


class Limited(RaysysError):
    """Too many requests for this key or tenant now (HTTP 429); ``retry_after`` seconds to wait."""

    http_status = 429
    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


# One round trip per request for both limits. KEYS[1] the API key's arrival time (GCRA), KEYS[2] the
# tenant's holders (zset). ARGV: [1] seconds per request (0: no rate limit), [2] burst, [3] slots
# (0: no cap), [4] holder id, [5] lease seconds. Nothing is written unless both admit the request.
# Returns "ok", "slots" (all taken) or "rate:<seconds to wait>" (a string: Lua numbers are truncated).
# Both keys are named by raysys' prefix; on a Redis Cluster they would need one hash tag.
ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local new_tat = nil
if interval > 0 then
  local burst = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local wait = tat - now - (burst - 1) * interval
  if wait > 0 then return 'rate:' .. tostring(wait) end
  new_tat = tat + interval
end
local capacity = tonumber(ARGV[3])
if capacity > 0 then
  local lease = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= capacity then return 'slots' end
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 1)
end
if new_tat then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return 'ok'
"""


def key_digest(api_key: str) -> str:
    """The name an API key has in Redis (its SHA-256): the key itself is never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class Limits:
    """The API's rate limits and slots over ``redis`` (the broker's async client)."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._prefix = f"{settings.key_prefix}{API_LIMIT_PREFIX}"
        self._admit = redis.register_script(ADMIT_SCRIPT)
        # A slot outlives its request only if the replica died: then it ends with the longest request.
        self.lease_seconds = settings.task_time_limit + 60.0

    def _slots_key(self, kind: str, tenant_id: str) -> str:
        return f"{self._prefix}slots:{kind}:{tenant_id}"

    async def admit(self, api_key: str | None, kind: str, tenant_id: str, capacity: int, what: str) -> str | None:
        """Count a request of ``api_key`` against ``API_RATE_LIMIT`` (None: no rate) and take one of
        ``capacity`` slots of ``kind`` for ``tenant_id`` (0: no cap), atomically, in one round trip.

        Returns the slot's holder id for :meth:`release` (None when no slot was taken).
        Raises :class:`Limited` (``what`` names the slots in its message); then nothing is counted.
        """
        rate = self.settings.api_rate_limit if api_key is not None else 0.0
        if rate <= 0 and capacity <= 0:
            return None
        holder = uuid.uuid4().hex if capacity > 0 else None
        slots = self._slots_key(kind, tenant_id)
        rate_key = f"{self._prefix}rate:{key_digest(api_key)}" if api_key is not None else slots
        answer = await self._admit(keys=[rate_key, slots],
                                   args=[1.0 / rate if rate > 0 else 0, self.settings.api_rate_burst,
                                         max(0, capacity), holder or "", self.lease_seconds])
        answer = answer.decode() if isinstance(answer, bytes) else str(answer)
        if answer.startswith("rate:"):
            raise Limited(f"more than {rate:g} requests per second for this API key; retry later",
                          float(answer[5:]))
        if answer == "slots":
            raise Limited(f"this tenant already has {capacity} {what} in progress; retry later", 1)
        return holder

    async def acquire(self, kind: str, tenant_id: str, capacity: int, what: str) -> str | None:
        """Take one of ``capacity`` slots of ``kind`` for ``tenant_id`` (no rate counted); see :meth:`admit`."""
        return await self.admit(None, kind, tenant_id, capacity, what)

    async def release(self, kind: str, tenant_id: str, holder: str | None) -> None:
        """Give back a slot :meth:`acquire` returned (None: nothing to give back). Never raises."""
        if holder is None:
            return
        try:
            await self.redis.zrem(self._slots_key(kind, tenant_id), holder)
        except Exception:  # noqa: BLE001 - Redis unreachable: the slot's lease ends it instead
            log.warning("could not give back a %s slot of tenant %s; its lease will", kind, tenant_id, exc_info=True)

    @asynccontextmanager
    async def slot(self, kind: str, tenant_id: str, capacity: int, what: str) -> AsyncIterator[None]:
        """Hold a slot (:meth:`acquire`) while the block runs; raises :class:`Limited` when none is free."""
        holder = await self.acquire(kind, tenant_id, capacity, what)
        try:
            yield
        finally:
            await self.release(kind, tenant_id, holder)
