"""PostgreSQL through asyncpg: connection pools, versioned migrations, and tenant-scoped queries.

Migrations are the numbered ``migrations/NNN_name.sql`` files in this package, applied in order,
each in its own transaction, recorded in ``schema_migrations``; an advisory lock keeps two processes
from applying them at once. Every query that touches tenant data takes a ``tenant_id`` and filters on
it, and every value is a bind parameter.

:func:`open_db` is the one way the rest of raysys opens the database from its settings
(:func:`database_url` resolves the URL or raises :class:`~raysys.config.ConfigError`), and
:func:`run_sync` runs such code from synchronous task code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from raysys.config import ConfigError, Settings
from raysys.errors import NotFound

_MIGRATION_LOCK = 7_354_120_001  # pg_advisory_lock key for migrations
NO_DATABASE = "POSTGRES_URL is not set and no embedded stack is running (run `raysys up`)."
T = TypeVar("T")

# --- connections ------------------------------------------------------------------------------------------


def _encode_vector(v: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in v) + "]"


def _decode_vector(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",") if x]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # pgvector has no binary codec in asyncpg: send and read its text form.
    has_vector = await conn.fetchval("SELECT 1 FROM pg_type WHERE typname = 'vector'")
    if has_vector:
        await conn.set_type_codec("vector", encoder=_encode_vector, decoder=_decode_vector, schema="public",
                                  format="text")


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections know jsonb and vector; migrations are applied first."""
    await migrate(url)
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection)


def database_url(settings: Settings) -> str:
    """The PostgreSQL URL of ``settings`` (or of the embedded stack). Raises :class:`ConfigError` when
    there is none; callers that owe a status code or an exit code turn it into one at their edge."""
    url = settings.postgres_url or settings.resolved().postgres_url
    if not url:
        raise ConfigError(NO_DATABASE)
    return url


def has_database(settings: Settings) -> bool:
    """Whether :func:`database_url` would find a database (work that can run without one asks this)."""
    return bool(settings.postgres_url or settings.resolved().postgres_url)


@contextlib.asynccontextmanager
async def open_db(settings: Settings, max_size: int = 2) -> AsyncIterator[Database]:
    """A :class:`Database` on ``settings``' PostgreSQL for one unit of work (a small pool, closed after).

    Raises :class:`ConfigError` when no database is configured.
    """
    db = await Database.open(database_url(settings), max_size=max_size)
    try:
        yield db
    finally:
        await db.close()


async def list_tenant_ids(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Every tenant id, over one short connection (no pool, no migrations)."""
    conn = await asyncpg.connect(database_url(settings), timeout=timeout)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM tenants ORDER BY id")]
    finally:
        await conn.close()


async def server_info(url: str, timeout: float = 3.0) -> str:
    """``"postgresql <version>, pgvector <version or 'not installed'>"`` over one short connection."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        version = await conn.fetchval("SHOW server_version")
        vector = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()
    return f"postgresql {version}, pgvector {vector or 'not installed'}"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where an event loop already runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- migrations --------------------------------------------------------------------------------------------


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each packaged migration, in order."""
    out = []
    for entry in resources.files("raysys.storage").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


async def migrate(url: str) -> list[str]:
    """Apply the migrations this database has not seen; return the names applied."""
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


# --- rows -------------------------------------------------------------------------------------------------------


@dataclass
class Call:
    id: str
    tenant_id: str
    customer_id: str
    started_at: datetime
    agent_id: str | None = None
    channel: str = "voice"
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    hold_seconds: float = 0.0
    acw_seconds: float = 0.0
    audio_path: str | None = None
    audio_layout: str = "auto"
    intent: str | None = None
    resolved: bool | None = None

    @property
    def talk_seconds(self) -> float:
        """Connected time less hold: from answer (or start) to end."""
        if not self.ended_at:
            return 0.0
        start = self.answered_at or self.started_at
        return max(0.0, (self.ended_at - start).total_seconds() - self.hold_seconds)

    @property
    def aht_seconds(self) -> float:
        """Average-handling-time contribution: talk + hold + after-call work."""
        return self.talk_seconds + self.hold_seconds + self.acw_seconds


@dataclass
class Turn:
    turn_index: int
    speaker_role: str
    start_s: float
    end_s: float
    text: str = ""
    source: str = "platform"  # 'platform' (the call platform wrote it) or 'asr' (transcribed here)
    model_version: str | None = None
    confidence: float | None = None
    words: list[dict] | None = None


CALL_COLUMNS = ("id", "tenant_id", "customer_id", "agent_id", "channel", "started_at", "answered_at", "ended_at",
                "hold_seconds", "acw_seconds", "audio_path", "audio_layout", "intent", "resolved")


async def _insert_turns(conn: asyncpg.Connection, tenant_id: str, call_id: str, turns: Sequence[Turn]) -> None:
    await conn.executemany(
        "INSERT INTO call_turns (call_id, tenant_id, turn_index, speaker_role, start_s, end_s, text, source, "
        "model_version, confidence, words) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [(call_id, tenant_id, t.turn_index, t.speaker_role, t.start_s, t.end_s, t.text, t.source, t.model_version,
          t.confidence, t.words) for t in turns],
    )


async def tenant_pii(conn: Any, tenant_id: str) -> dict[str, bool | None]:
    """``{"pii_redaction", "pii_redact_documents"}`` of the tenant (None: not set, or no such tenant)."""
    row = await conn.fetchrow("SELECT pii_redaction, pii_redact_documents FROM tenants WHERE id = $1", tenant_id)
    return dict(row) if row else {"pii_redaction": None, "pii_redact_documents": None}


async def redact_turn_texts(conn: Any, tenant_id: str, call_id: str, turns: Sequence[Turn]) -> None:
    """Overwrite the call's stored turn texts (and words) with their redacted versions, by turn index."""
    await conn.executemany(
        "UPDATE call_turns SET text = $4, words = $5 WHERE tenant_id = $1 AND call_id = $2 AND turn_index = $3",
        [(tenant_id, call_id, t.turn_index, t.text, t.words) for t in turns])


# --- repository -------------------------------------------------------------------------------------------------


class Database:
    """Tenant-scoped queries over one asyncpg pool. Build with :meth:`open`, close with :meth:`close`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str, max_size: int = 10) -> Database:
        return cls(await create_pool(url, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        """One round trip on the pool; raises what asyncpg raises when the database is gone."""
        await self.pool.fetchval("SELECT 1")

    # tenants ------------------------------------------------------------------------------------------------

    async def upsert_tenant(self, tenant_id: str, name: str | None = None,
                            report_recipients: Iterable[str] = ()) -> None:
        await self.pool.execute(
            "INSERT INTO tenants (id, name, report_recipients) VALUES ($1, $2, $3) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, report_recipients = EXCLUDED.report_recipients",
            tenant_id, name or tenant_id, list(report_recipients),
        )

    async def ensure_tenant(self, tenant_id: str) -> None:
        await self.pool.execute("INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", tenant_id)

    async def get_tenant(self, tenant_id: str) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT * FROM tenants WHERE id = $1", tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        return dict(row)

    async def set_tenant_pii(self, tenant_id: str, redaction: bool | None, documents: bool | None = None) -> None:
        """A tenant's PII settings (None: the deployment's default). Raises NotFound."""
        status = await self.pool.execute(
            "UPDATE tenants SET pii_redaction = $2, pii_redact_documents = $3 WHERE id = $1",
            tenant_id, redaction, documents)
        if status.split()[-1] == "0":
            raise NotFound(f"tenant {tenant_id!r} does not exist")

    async def tenant_pii(self, tenant_id: str) -> dict[str, bool | None]:
        return await tenant_pii(self.pool, tenant_id)

    async def list_tenants(self) -> list[str]:
        return [r["id"] for r in await self.pool.fetch("SELECT id FROM tenants ORDER BY id")]

    # API keys -----------------------------------------------------------------------------------------------

    @staticmethod
    def hash_key(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    async def create_api_key(self, tenant_id: str, name: str = "") -> tuple[str, str]:
        """Create a key for the tenant; return (key id, secret). Only the hash is stored."""
        await self.ensure_tenant(tenant_id)
        secret = "rsk_" + secrets.token_urlsafe(32)
        key_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, name) VALUES ($1, $2, $3, $4, $5)",
            key_id, tenant_id, self.hash_key(secret), secret[:10], name,
        )
        return str(key_id), secret

    async def revoke_api_key(self, tenant_id: str, key: str) -> bool:
        """Revoke by key id, prefix or secret; return whether a live key of this tenant was revoked."""
        status = await self.pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL "
            "AND (id::text = $2 OR prefix = $2 OR key_hash = $3)",
            tenant_id, key, self.hash_key(key),
        )
        return status.split()[-1] != "0"

    async def tenant_for_key(self, secret: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", self.hash_key(secret)
        )

    # calls --------------------------------------------------------------------------------------------------

    async def upsert_calls(self, calls: Sequence[Call]) -> None:
        cols = ", ".join(CALL_COLUMNS)
        params = ", ".join(f"${i + 1}" for i in range(len(CALL_COLUMNS)))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in CALL_COLUMNS if c not in ("id", "tenant_id"))
        await self.pool.executemany(
            f"INSERT INTO calls ({cols}) VALUES ({params}) ON CONFLICT (id) DO UPDATE SET {updates} "
            "WHERE calls.tenant_id = EXCLUDED.tenant_id",
            [tuple(getattr(c, col) for col in CALL_COLUMNS) for c in calls],
        )

    async def replace_turns(self, tenant_id: str, call_id: str, turns: Sequence[Turn]) -> None:
        """Store the platform's turns for the call, replacing any it had (transcribed ones included)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM call_turns WHERE tenant_id = $1 AND call_id = $2", tenant_id, call_id)
            await _insert_turns(conn, tenant_id, call_id, turns)

    async def save_asr_turns(self, tenant_id: str, call_id: str, turns: Sequence[Turn]) -> bool:
        """Store transcribed turns (``source='asr'``) unless the platform wrote turns for the call.

        Platform turns win: when the call has any, nothing changes and this returns False. Earlier
        transcribed turns are replaced. The call's row is locked for the check, so a platform write
        racing with it either lands first (and wins) or replaces these afterwards.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval("SELECT 1 FROM calls WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                                         call_id, tenant_id)
            if locked is None:
                raise NotFound(f"call {call_id!r} does not exist")
            platform = await conn.fetchval(
                "SELECT count(*) FROM call_turns WHERE tenant_id = $1 AND call_id = $2 AND source <> 'asr'",
                tenant_id, call_id)
            if platform:
                return False
            await conn.execute("DELETE FROM call_turns WHERE tenant_id = $1 AND call_id = $2", tenant_id, call_id)
            await _insert_turns(conn, tenant_id, call_id, [
                Turn(t.turn_index, t.speaker_role, t.start_s, t.end_s, t.text, "asr", t.model_version,
                     t.confidence, t.words) for t in turns])
            return True

    async def redact_turns(self, tenant_id: str, call_id: str, turns: Sequence[Turn]) -> None:
        """Store redacted turn texts in place of the originals (:func:`redact_turn_texts`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await redact_turn_texts(conn, tenant_id, call_id, turns)

    async def get_call(self, call_id: str, tenant_id: str | None = None) -> Call:
        """The call; with ``tenant_id``, only if it belongs to that tenant. Raises NotFound."""
        cols = ", ".join(CALL_COLUMNS)
        if tenant_id is None:
            # Queue jobs carry only the call id (the Celery contract); ids are globally unique.
            row = await self.pool.fetchrow(f"SELECT {cols} FROM calls WHERE id = $1", call_id)
        else:
            row = await self.pool.fetchrow(f"SELECT {cols} FROM calls WHERE id = $1 AND tenant_id = $2",
                                           call_id, tenant_id)
        if row is None:
            raise NotFound(f"call {call_id!r} does not exist")
        return Call(**dict(row))

    async def get_turns(self, tenant_id: str, call_id: str) -> list[Turn]:
        rows = await self.pool.fetch(
            "SELECT turn_index, speaker_role, start_s, end_s, text, source, model_version, confidence, words "
            "FROM call_turns "
            "WHERE tenant_id = $1 AND call_id = $2 ORDER BY turn_index", tenant_id, call_id)
        return [Turn(**dict(r)) for r in rows]

    async def list_call_ids(self, tenant_id: str, start: datetime, end: datetime) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT id FROM calls WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 ORDER BY started_at",
            tenant_id, start, end)
        return [r["id"] for r in rows]

    async def save_analytics(self, tenant_id: str, call_id: str, values: dict[str, Any]) -> None:
        """Insert or replace the call's analytics row (re-running a call replaces, never duplicates)."""
        cols = list(values)
        names = ", ".join(["call_id", "tenant_id", *cols, "processed_at"])
        params = ", ".join(f"${i}" for i in range(1, len(cols) + 3))
        updates = ", ".join([*(f"{c} = EXCLUDED.{c}" for c in cols), "processed_at = now()"])
        await self.pool.execute(
            f"INSERT INTO call_analytics ({names}) VALUES ({params}, now()) "
            f"ON CONFLICT (call_id) DO UPDATE SET {updates} WHERE call_analytics.tenant_id = EXCLUDED.tenant_id",
            call_id, tenant_id, *values.values(),
        )

    async def pii_counts(self, tenant_id: str, call_id: str) -> dict[str, int]:
        """The PII redaction counts of the call's last analytics run (``{}`` when it has none)."""
        counts = await self.pool.fetchval(
            "SELECT pii_redaction_counts FROM call_analytics WHERE tenant_id = $1 AND call_id = $2", tenant_id, call_id)
        return dict(counts or {})

    async def get_analytics(self, tenant_id: str, call_id: str) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT * FROM call_analytics WHERE tenant_id = $1 AND call_id = $2",
                                       tenant_id, call_id)
        if row is None:
            raise NotFound(f"no analytics for call {call_id!r}")
        return dict(row)
