"""Fixtures shared by the analytics, intents, reports and maintenance tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    """One MiniLM encoder per session (single thread: the machine has two cores)."""
    import torch

    torch.set_num_threads(1)
    from raysys.actors.embedding import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def analytics_chdb(tmp_path_factory) -> str:
    """A chDB directory of the analytics tests' own, opened only by its Warehouse actor.

    chDB admits one process per directory; the session's ``chdb_dsn`` may already be open in the pytest
    process (storage tests open it directly), and then no actor could open it.
    """
    return f"chdb://{tmp_path_factory.mktemp('analytics-chdb')}"


@pytest.fixture
def asettings(settings, analytics_chdb):
    """The session's services, with ClickHouse on the analytics tests' own chDB (through its actor)."""
    return settings.replace(clickhouse_url=analytics_chdb)


@pytest.fixture
def ctx(asettings, ray_cluster):
    from raysys.tasks.registry import TaskContext

    return TaskContext(settings=asettings, task_id="test")


def wh(settings, method, *args):
    from raysys.actors.warehouse import wh_call

    return wh_call(settings, method, *args)


def run(coro):
    return asyncio.run(coro)


async def with_db(settings, fn):
    from raysys.storage.postgres import Database

    db = await Database.open(settings.postgres_url, max_size=2)
    try:
        return await fn(db)
    finally:
        await db.close()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


SMALL_CATALOGUE = [
    ("I lost my card yesterday", "card_lost"), ("my card was stolen", "card_lost"),
    ("I can't find my debit card anywhere", "card_lost"), ("please block my lost card", "card_lost"),
    ("where is my package", "delivery_status"), ("my order hasn't arrived yet", "delivery_status"),
    ("the tracking has not updated in days", "delivery_status"), ("when will my parcel be delivered", "delivery_status"),
    ("I forgot my password", "password_reset"), ("I can't log in to my account", "password_reset"),
    ("the reset email never came", "password_reset"), ("my password is not accepted", "password_reset"),
]
