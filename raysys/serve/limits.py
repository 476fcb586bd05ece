"""Request limits shared by every API replica, kept in Redis: a rate per API key, slots per tenant.

- Rate: a generic cell rate algorithm (GCRA) per API key — ``API_RATE_LIMIT`` requests per second
  with bursts of ``API_RATE_BURST``. One key per API key holds its "theoretical arrival time".
- Slots: a counting semaphore per tenant and kind (requests in progress: ``API_TENANT_CONCURRENCY``;
  ``wait=true`` analytics: ``API_TENANT_WAIT_SLOTS``). A sorted set holds one member per holder,
  scored by its lease's end, so a replica that dies holding slots frees them when the lease ends.

Both scripts take the time from Redis (``TIME``), never from the replica: replicas on different hosts
share one clock. A refusal is :class:`Limited` (HTTP 429) with the seconds to wait (``Retry-After``).

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


# KEYS[1] the key's arrival time; ARGV[1] seconds per request, ARGV[2] burst.
# Returns "0" when admitted, else the seconds to wait (a string: Lua numbers would be truncated).
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait > 0 then return tostring(wait) end
local new = tat + interval
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
return '0'
"""

# KEYS[1] the holders' zset; ARGV[1] capacity, ARGV[2] holder, ARGV[3] lease seconds.
# Returns 1 when the slot is taken, else 0. Expired leases are dropped first.
ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
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
        self._rate = redis.register_script(RATE_SCRIPT)
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        # A slot outlives its request only if the replica died: then it ends with the longest request.
        self.lease_seconds = settings.task_time_limit + 60.0

    async def check_rate(self, api_key: str) -> None:
        """Count one request of ``api_key``. Raises :class:`Limited` past ``API_RATE_LIMIT`` (0: no limit)."""
        rate = self.settings.api_rate_limit
        if rate <= 0:
            return
        wait = float(await self._rate(keys=[f"{self._prefix}rate:{key_digest(api_key)}"],
                                      args=[1.0 / rate, self.settings.api_rate_burst]))
        if wait > 0:
            raise Limited(f"more than {rate:g} requests per second for this API key; retry later", wait)

    def _slots_key(self, kind: str, tenant_id: str) -> str:
        return f"{self._prefix}slots:{kind}:{tenant_id}"

    async def acquire(self, kind: str, tenant_id: str, capacity: int, what: str) -> str | None:
        """Take one of ``capacity`` slots of ``kind`` for ``tenant_id``; the holder id (None: no cap).

        Raises :class:`Limited` when all are taken (``what`` names them in the message).
        """
        if capacity <= 0:
            return None
        holder = uuid.uuid4().hex
        if not int(await self._acquire(keys=[self._slots_key(kind, tenant_id)],
                                       args=[capacity, holder, self.lease_seconds])):
            raise Limited(f"this tenant already has {capacity} {what} in progress; retry later", 1)
        return holder

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
