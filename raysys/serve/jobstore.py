"""Which tenant owns which job, and a job's state as the Celery result backend holds it.

Jobs enqueued over HTTP are recorded under ``{p}raysys:job-tenant:<id>`` (see raysys.constants) before
they are sent, for as long as the job can be pending or running plus its result's lifetime, so a status read can refuse another tenant's job (404, as
if it did not exist). States and results are read straight from ``celery-task-meta-<id>``, the value
the bridge writes for Celery clients; tracebacks stay on the server.
"""

from __future__ import annotations

import json
import math
from typing import Any

import redis.asyncio as aioredis

from raysys.config import Settings
from raysys.constants import JOB_TENANT_PREFIX, RESULT_KEY_PREFIX


class JobStore:
    """Async Redis access for job ownership (broker Redis) and results (result backend)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = aioredis.Redis.from_url(settings.redis_url)
        self.backend = (self.broker if settings.backend_url == settings.redis_url
                        else aioredis.Redis.from_url(settings.backend_url))

    def _owner_key(self, job_id: str) -> str:
        return f"{self.settings.key_prefix}{JOB_TENANT_PREFIX}{job_id}"

    def owner_ttl(self, delay: float = 0.0) -> int:
        """Seconds to keep a job's owner: its delay, every try at the longest time limit and backoff,
        then its result's lifetime. Shorter, and a job put off for days would lose its owner (404)
        before it ran."""
        s = self.settings
        tries = s.max_retries + 1
        return math.ceil(max(0.0, delay) + tries * (s.task_time_limit + s.retry_backoff_max) + s.result_expires)

    async def record(self, tenant_id: str, job_id: str, delay: float = 0.0) -> None:
        """Remember that ``tenant_id`` enqueued ``job_id``, due in ``delay`` seconds (see :meth:`owner_ttl`)."""
        await self.broker.set(self._owner_key(job_id), tenant_id, ex=self.owner_ttl(delay))

    async def owner(self, job_id: str) -> str | None:
        value = await self.broker.get(self._owner_key(job_id))
        return value.decode() if value is not None else None

    async def owned_state(self, tenant_id: str, job_id: str) -> dict[str, Any] | None:
        """The job's state if ``tenant_id`` enqueued it, else None (one round trip when Redis is shared)."""
        if self.backend is self.broker:
            owner, raw = await self.broker.mget(self._owner_key(job_id), f"{RESULT_KEY_PREFIX}{job_id}")
            if owner is None or owner.decode() != tenant_id:
                return None
            return self._state(job_id, raw)
        if await self.owner(job_id) != tenant_id:
            return None
        return await self.state(job_id)

    async def state(self, job_id: str) -> dict[str, Any]:
        """``{"job_id", "state", "result"|"error"|"progress", "date_done"}`` for the job; PENDING if unknown."""
        return self._state(job_id, await self.backend.get(f"{RESULT_KEY_PREFIX}{job_id}"))

    @staticmethod
    def _state(job_id: str, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {"job_id": job_id, "state": "PENDING", "ready": False}
        meta = json.loads(raw)
        status = str(meta.get("status", "PENDING")).upper()
        out: dict[str, Any] = {"job_id": job_id, "state": status,
                               "ready": status in ("SUCCESS", "FAILURE", "REVOKED")}
        result = meta.get("result")
        if status == "SUCCESS":
            out["result"] = result
        elif status in ("FAILURE", "REVOKED", "RETRY"):
            if isinstance(result, dict):
                message = result.get("exc_message")
                if isinstance(message, list | tuple):
                    message = " ".join(str(m) for m in message)
                out["error"] = {"type": result.get("exc_type"), "message": message}
            elif result is not None:
                out["error"] = {"type": None, "message": str(result)}
        elif result is not None:
            out["progress"] = result
        if meta.get("date_done"):
            out["date_done"] = meta["date_done"]
        return out

    async def ping(self) -> bool:
        return bool(await self.broker.ping())

    async def close(self) -> None:
        await self.broker.aclose()
        if self.backend is not self.broker:
            await self.backend.aclose()
