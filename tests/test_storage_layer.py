"""storage is the one data layer: one way to open PostgreSQL from settings (one error when none is configured),
the retention queries cleanup uses, and the typed Warehouse proxy, against real PostgreSQL and chDB."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest

from raysys.config import ConfigError, Settings
from raysys.errors import Forbidden, NotFound, RaysysError
from raysys.paths import confine_file
from raysys.storage import retention
from raysys.storage.postgres import (
    NO_DATABASE,
    Call,
    Turn,
    database_url,
    has_database,
    list_tenant_ids,
    open_db,
    run_sync,
)


def test_no_database_configured_is_one_config_error_that_is_not_retried(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))  # no POSTGRES_URL, no embedded stack

    async def use():
        async with open_db(settings):
            pass

    assert not has_database(settings)
    for attempt in (lambda: database_url(settings), lambda: asyncio.run(use()),
                    lambda: asyncio.run(list_tenant_ids(settings))):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert str(err.value) == NO_DATABASE
    assert isinstance(err.value, RaysysError) and not err.value.retryable


def test_open_db_and_tenant_ids_on_a_real_database(tmp_path, pg_url):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), postgres_url=pg_url)
    assert has_database(settings) and database_url(settings) == pg_url

    async def seed():
        async with open_db(settings) as db:
            await db.upsert_tenant("tenant_b")
            await db.upsert_tenant("tenant_a")
            await db.ping()
            with pytest.raises(NotFound):  # storage raises the one NotFound of raysys.errors
                await db.get_tenant("nobody")

    asyncio.run(seed())

    async def inside_a_running_loop():
        return run_sync(list_tenant_ids(settings))  # run_sync works where a loop already runs

    assert asyncio.run(inside_a_running_loop()) == ["tenant_a", "tenant_b"]


def test_retention_reads_locks_and_deletes_only_what_it_is_asked(tmp_path, pg_url):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), postgres_url=pg_url)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    old, new = now - timedelta(days=400), now - timedelta(days=1)

    async def scenario():
        async with open_db(settings) as db:
            for t in ("t1", "t2"):
                await db.ensure_tenant(t)
            for sid, tenant, expires in (("s_old", "t1", now - timedelta(hours=1)), ("s_live", "t1", now + timedelta(hours=1)),
                                         ("s_other", "t2", now - timedelta(hours=1))):
                await db.pool.execute("INSERT INTO sessions (id, tenant_id, redis_key, expires_at) VALUES ($1, $2, $3, $4)",
                                      sid, tenant, f"session:{sid}", expires)
            expired = await retention.expired_sessions(db, "t1", now)
            assert expired == [{"id": "s_old", "redis_key": "session:s_old"}]
            assert await retention.delete_sessions(db, "t1", ["s_old", "s_live", "s_other"], now) == 1

            await db.upsert_calls([Call(id=i, tenant_id=t, customer_id="c", started_at=s)
                                   for i, t, s in (("a_old", "t1", old), ("b_old", "t1", old + timedelta(hours=1)),
                                                   ("c_new", "t1", new), ("d_old", "t2", old))])
            await db.replace_turns("t1", "a_old", [Turn(0, "agent", 0.0, 1.0, "hello")])
            await db.save_analytics("t1", "a_old", {"intent": "billing"})
            async with retention.old_calls(db, "t1", now - timedelta(days=30), ["b_old"], 10) as batch:
                assert [c["id"] for c in batch.calls] == ["a_old"]
                assert [t["text"] for t in batch.turns["a_old"]] == ["hello"]
                assert batch.analytics["a_old"]["intent"] == "billing"
                assert await batch.delete(["a_old"]) == 1
            async with retention.old_calls(db, "t1", now - timedelta(days=30), [], 10) as batch:
                left = [c["id"] for c in batch.calls]
            remaining = [r["id"] for r in await db.pool.fetch("SELECT id FROM calls ORDER BY id")]
            sessions = [r["id"] for r in await db.pool.fetch("SELECT id FROM sessions ORDER BY id")]
            turns = await db.get_turns("t1", "a_old")
            return left, remaining, sessions, turns

    left, remaining, sessions, turns = asyncio.run(scenario())
    assert left == ["b_old"]  # the other tenant's old call and the recent one are never in t1's batch
    assert remaining == ["b_old", "c_new", "d_old"] and turns == []
    assert sessions == ["s_live", "s_other"]


def test_the_typed_warehouse_proxy_reads_a_day(tmp_path, chdb_dsn, ray_cluster, tenant_id):
    from raysys.actors.warehouse import Warehouse
    from raysys.storage.warehouse import DAILY_COLUMNS

    wh = Warehouse(Settings.from_env({}, data_dir=str(tmp_path / "data"), clickhouse_url=chdb_dsn))
    assert wh.ping() is True
    day = date(2026, 2, 3)
    started = datetime(2026, 2, 3, 9, tzinfo=UTC)
    facts = [{"tenant_id": tenant_id, "call_id": f"c{i}", "started_at": started + timedelta(minutes=i),
              "customer_id": "cust", "intent": "billing", "aht_seconds": 100.0 + i} for i in range(3)]
    assert wh.insert_call_facts(facts) == 3
    rows = wh.calls_of_day(tenant_id, day, ["call_id", "aht_seconds"], 2)
    assert rows == [{"call_id": "c0", "aht_seconds": 100.0}, {"call_id": "c1", "aht_seconds": 101.0}]
    with pytest.raises(ValueError, match="no column 'secret'"):
        wh.calls_of_day(tenant_id, day, ["call_id", "secret"], 2)
    row = dict(zip(DAILY_COLUMNS, [tenant_id, day, 3, 101.0, 102.0, 1.0, 0, 0.0, [("billing", 3)], [0] * 24,
                                   datetime.now(UTC)], strict=True))
    assert wh.insert("daily_metrics", [list(row.values())], DAILY_COLUMNS) == 1
    (got,) = wh.day_metrics(day, tenant_id)
    assert got["tenant_id"] == tenant_id and got["total_calls"] == 3 and got["top_intents"] == [["billing", 3]]
    assert wh.day_metrics(day, "nobody") == []


def test_confine_file_refuses_outside_the_roots_and_missing_files(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.wav").write_bytes(b"x")
    assert confine_file("a.wav", [root], "recording") == (root / "a.wav").resolve()
    with pytest.raises(NotFound, match="recording 'missing.wav' does not exist"):
        confine_file("missing.wav", [root], "recording")
    with pytest.raises(Forbidden):
        confine_file(str(tmp_path / "elsewhere.wav"), [root], "recording")
