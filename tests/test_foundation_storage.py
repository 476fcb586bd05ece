"""Schemas round-trip real rows through a real PostgreSQL (with pgvector) and a real chDB."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest

from raysys.storage.postgres import Call, Database, NotFound, Turn, migrate, migration_files


def run(coro):
    return asyncio.run(coro)


def test_migrations_apply_once(pg_url):
    # pg_url is already migrated; a second run applies nothing and the versions are recorded.
    assert run(migrate(pg_url)) == []

    async def versions():
        db = await Database.open(pg_url)
        try:
            return [r["version"] for r in await db.pool.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        finally:
            await db.close()

    assert run(versions()) == [v for v, _, _ in migration_files()]


def test_calls_turns_analytics_round_trip_and_stay_tenant_scoped(pg_url):
    t0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    call = Call(id="call_a1", tenant_id="tenant_a", customer_id="cust_9", agent_id="agent_1", channel="voice",
                started_at=t0, answered_at=t0 + timedelta(seconds=12), ended_at=t0 + timedelta(seconds=312),
                hold_seconds=40.0, acw_seconds=25.5, audio_path="/data/uploads/a1.wav", audio_layout="stereo",
                intent="card_lost", resolved=True)
    turns = [Turn(0, "agent", 0.0, 2.5, "Hello, how can I help?"), Turn(1, "customer", 2.7, 6.0, "I lost my card.")]

    async def scenario():
        db = await Database.open(pg_url)
        try:
            await db.upsert_tenant("tenant_a", "Tenant A", ["ops@a.example"])
            await db.upsert_tenant("tenant_b")
            await db.upsert_calls([call])
            await db.replace_turns("tenant_a", "call_a1", turns)
            await db.replace_turns("tenant_a", "call_a1", turns)  # replace, never duplicate
            got = await db.get_call("call_a1", "tenant_a")
            got_turns = await db.get_turns("tenant_a", "call_a1")
            with pytest.raises(NotFound):
                await db.get_call("call_a1", "tenant_b")
            assert await db.get_turns("tenant_b", "call_a1") == []
            await db.save_analytics("tenant_a", "call_a1", {"num_speakers": 2, "intent": "card_lost",
                                                            "diarization": {"segments": [[0, 1, "A"]]},
                                                            "sentiment_mean": 0.25})
            await db.save_analytics("tenant_a", "call_a1", {"num_speakers": 3, "intent": "card_lost",
                                                            "diarization": {"segments": []}, "sentiment_mean": -0.5})
            analytics = await db.get_analytics("tenant_a", "call_a1")
            count = await db.pool.fetchval("SELECT count(*) FROM call_analytics WHERE call_id = 'call_a1'")
            with pytest.raises(NotFound):
                await db.get_analytics("tenant_b", "call_a1")
            tenant = await db.get_tenant("tenant_a")
            return got, got_turns, analytics, count, tenant
        finally:
            await db.close()

    got, got_turns, analytics, count, tenant = run(scenario())
    assert got == call
    assert got.aht_seconds == pytest.approx(300 - 40 + 40 + 25.5)
    assert got_turns == turns
    assert count == 1 and analytics["num_speakers"] == 3 and analytics["diarization"] == {"segments": []}
    assert analytics["sentiment_mean"] == -0.5
    assert tenant["report_recipients"] == ["ops@a.example"]


def test_api_keys_are_stored_hashed_and_revocable(pg_url):
    async def scenario():
        db = await Database.open(pg_url)
        try:
            key_id, secret = await db.create_api_key("tenant_k", "ci")
            stored = await db.pool.fetchval("SELECT key_hash FROM api_keys WHERE id = $1::uuid", key_id)
            found = await db.tenant_for_key(secret)
            wrong_tenant = await db.revoke_api_key("tenant_other", key_id)
            revoked = await db.revoke_api_key("tenant_k", key_id)
            after = await db.tenant_for_key(secret)
            return secret, stored, found, wrong_tenant, revoked, after
        finally:
            await db.close()

    secret, stored, found, wrong_tenant, revoked, after = run(scenario())
    assert secret not in stored and stored == Database.hash_key(secret)
    assert found == "tenant_k"
    assert wrong_tenant is False and revoked is True and after is None


def test_document_chunks_with_pgvector_round_trip_and_rank_by_cosine(pg_url):
    async def scenario():
        db = await Database.open(pg_url)
        try:
            await db.ensure_tenant("tenant_d")
            await db.pool.execute(
                "INSERT INTO documents (id, tenant_id, source_path, content_hash, mime_type, pages) "
                "VALUES ('doc1', 'tenant_d', '/x.md', 'h', 'text/markdown', 1)")
            vectors = [[1.0] + [0.0] * 383, [0.0, 1.0] + [0.0] * 382]
            await db.pool.executemany(
                "INSERT INTO document_chunks (tenant_id, document_id, position, page, heading, text, embedding) "
                "VALUES ('tenant_d', 'doc1', $1, 1, 'H', $2, $3)",
                [(0, "first", vectors[0]), (1, "second", vectors[1])])
            query = [0.1, 0.9] + [0.0] * 382
            rows = await db.pool.fetch(
                "SELECT text, embedding, 1 - (embedding <=> $2) AS score FROM document_chunks "
                "WHERE tenant_id = $1 ORDER BY embedding <=> $2 LIMIT 2", "tenant_d", query)
            return rows
        finally:
            await db.close()

    rows = run(scenario())
    assert [r["text"] for r in rows] == ["second", "first"]
    assert rows[0]["embedding"][1] == 1.0 and len(rows[0]["embedding"]) == 384


def test_sessions_table_round_trip(pg_url):
    async def scenario():
        db = await Database.open(pg_url)
        try:
            await db.ensure_tenant("tenant_s")
            expires = datetime.now(UTC) - timedelta(minutes=1)
            await db.pool.execute(
                "INSERT INTO sessions (id, tenant_id, redis_key, data, expires_at) VALUES ($1, $2, $3, $4, $5)",
                "sess1", "tenant_s", "session:sess1", {"caller": "+971"}, expires)
            return await db.pool.fetchrow("SELECT * FROM sessions WHERE tenant_id = $1", "tenant_s")
        finally:
            await db.close()

    row = run(scenario())
    assert row["data"] == {"caller": "+971"} and row["redis_key"] == "session:sess1"


@pytest.fixture(scope="module")
def wh(chdb_dsn, ray_cluster, tmp_path_factory):
    """The session chDB through its Warehouse actor (chDB admits one process per directory, so the
    pytest process must not open it itself: every other test reaches it through the actor too)."""
    from raysys.actors.warehouse import Warehouse
    from raysys.config import Settings

    return Warehouse(Settings.from_env({}, clickhouse_url=chdb_dsn, data_dir=str(tmp_path_factory.mktemp("wh"))))


def test_call_facts_round_trip_through_chdb_and_replace_by_call(wh, tenant_id):
    started = datetime(2026, 11, 3, 14, 5, tzinfo=UTC)
    fact = {"tenant_id": tenant_id, "call_id": "c1", "started_at": started, "customer_id": "cust_1",
            "agent_id": "agent_7", "intent": "billing_dispute", "resolved": True, "talk_seconds": 200.0,
            "hold_seconds": 30.0, "acw_seconds": 40.0, "aht_seconds": 270.0, "sentiment_mean": 0.4}
    assert wh.insert_call_facts([fact]) == 1
    assert wh.insert_call_facts([{**fact, "sentiment_mean": -0.2, "resolved": False}]) == 1
    row = wh.call_fact(tenant_id, "c1")
    assert row["day"] == date(2026, 11, 3)
    assert row["aht_seconds"] == 270.0 and row["intent"] == "billing_dispute"
    assert row["sentiment_mean"] == -0.2 and row["resolved"] == 0
    assert wh.count_call_facts(tenant_id) == 1
    assert wh.call_fact("some_other_tenant", "c1") is None


def test_daily_metrics_and_audits_round_trip(wh, tenant_id):
    from raysys.storage.warehouse import AUDIT_COLUMNS, DAILY_COLUMNS

    now = datetime.now(UTC)
    wh.insert("daily_metrics", [[tenant_id, date(2026, 11, 3), 10, 300.0, 450.0, 0.8, 0, 0.3,
                                 [("card_lost", 4), ("billing_dispute", 3)], [0] * 24, now]], DAILY_COLUMNS)
    rows = wh.daily_metrics(tenant_id, date(2026, 11, 1), date(2026, 11, 5))
    assert len(rows) == 1 and rows[0]["total_calls"] == 10
    assert [tuple(x) for x in rows[0]["top_intents"]] == [("card_lost", 4), ("billing_dispute", 3)]
    run_id = f"run-{tenant_id}"
    wh.insert("model_audits", [[run_id, "diarization", "builtin-1", "der", 0.09, 0.02, None, 0, "{}", now]],
              AUDIT_COLUMNS)
    audit = wh.query("SELECT * FROM model_audits WHERE run_id = {r:String}", {"r": run_id})
    assert audit[0]["value"] == pytest.approx(0.09) and audit[0]["baseline"] is None
