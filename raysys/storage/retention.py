"""Retention queries in PostgreSQL: expired sessions, and old calls to archive before they are deleted.

Used by ``workers.tasks.cleanup_expired_sessions`` (:mod:`raysys.tasks.maintenance`), which decides
what to keep; this module only reads, locks and deletes, every statement tenant-scoped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from raysys.storage.postgres import Database


async def expired_sessions(db: Database, tenant_id: str, now: datetime) -> list[dict[str, Any]]:
    """The tenant's sessions past ``expires_at`` at ``now``: ``[{"id", "redis_key"}]``."""
    rows = await db.pool.fetch("SELECT id, redis_key FROM sessions WHERE tenant_id = $1 AND expires_at < $2",
                               tenant_id, now)
    return [dict(r) for r in rows]


async def delete_sessions(db: Database, tenant_id: str, ids: Sequence[str], now: datetime) -> int:
    """Delete those of ``ids`` that are still expired at ``now``; returns how many rows went."""
    status = await db.pool.execute(
        "DELETE FROM sessions WHERE tenant_id = $1 AND id = ANY($2::text[]) AND expires_at < $3",
        tenant_id, list(ids), now)
    return int(status.split()[-1])


@dataclass
class OldCalls:
    """A locked batch of a tenant's calls (see :func:`old_calls`): rows as dicts, by call id."""

    tenant_id: str
    calls: list[dict[str, Any]]
    turns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # call id -> turns, in order
    analytics: dict[str, dict[str, Any]] = field(default_factory=dict)    # call id -> its analytics row
    _conn: asyncpg.Connection | None = None

    async def delete(self, call_ids: Sequence[str]) -> int:
        """Delete these calls (their turns and analytics go with them) in the batch's transaction."""
        assert self._conn is not None
        status = await self._conn.execute("DELETE FROM calls WHERE tenant_id = $1 AND id = ANY($2::text[])",
                                          self.tenant_id, list(call_ids))
        return int(status.split()[-1])


@contextlib.asynccontextmanager
async def old_calls(db: Database, tenant_id: str, started_before: datetime, skip: Sequence[str],
                    limit: int) -> AsyncIterator[OldCalls]:
    """The tenant's oldest ``limit`` calls started before ``started_before`` (but those in ``skip``), with
    every column of their turns and analytics, locked (``FOR UPDATE``) until the block ends; what
    :meth:`OldCalls.delete` deletes inside the block commits with it. ``calls`` is empty when none is left.
    """
    async with db.pool.acquire() as conn, conn.transaction():
        calls = [dict(c) for c in await conn.fetch(
            "SELECT * FROM calls WHERE tenant_id = $1 AND started_at < $2 AND NOT (id = ANY($3::text[])) "
            "ORDER BY started_at LIMIT $4 FOR UPDATE", tenant_id, started_before, list(skip), limit)]
        batch = OldCalls(tenant_id, calls, {c["id"]: [] for c in calls}, {}, conn)
        if calls:
            ids = [c["id"] for c in calls]
            for t in await conn.fetch("SELECT * FROM call_turns WHERE tenant_id = $1 AND call_id = ANY($2::text[]) "
                                      "ORDER BY call_id, turn_index", tenant_id, ids):
                batch.turns[t["call_id"]].append(dict(t))
            for a in await conn.fetch("SELECT * FROM call_analytics WHERE tenant_id = $1 AND call_id = ANY($2::text[])",
                                      tenant_id, ids):
                batch.analytics[a["call_id"]] = dict(a)
        try:
            yield batch
        finally:
            batch._conn = None
