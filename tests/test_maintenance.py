"""Cleanup (sessions, archive-then-delete of old calls, temp files) and model audits, on real services."""

from __future__ import annotations

import csv
import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
import ray
import redis
from analytics_fixtures import SMALL_CATALOGUE, run, with_db

from raysys.actors.warehouse import Warehouse
from raysys.analytics.intents import IntentModel
from raysys.errors import InvalidInput
from raysys.storage.postgres import Call, Turn
from raysys.storage.warehouse import ARCHIVE_DDL
from raysys.tasks.maintenance import audit_models, cleanup_expired_sessions

NOW = datetime.now(UTC)


def _seed_calls(settings, tenant):
    async def go(db):
        await db.upsert_tenant(tenant)
        calls = [Call(id=f"{tenant}_old{i}", tenant_id=tenant, customer_id=f"u{i}", started_at=NOW - timedelta(days=400 + i),
                      ended_at=NOW - timedelta(days=400 + i) + timedelta(minutes=3), intent="billing", resolved=True)
                 for i in range(2)]
        calls.append(Call(id=f"{tenant}_recent", tenant_id=tenant, customer_id="u9", started_at=NOW - timedelta(days=10)))
        await db.upsert_calls(calls)
        for c in calls:
            await db.replace_turns(tenant, c.id, [Turn(0, "agent", 0, 2, "hello"), Turn(1, "customer", 2, 5, "my bill")])
        await db.save_analytics(tenant, calls[0].id, {"intent": "billing", "summary": "Customer: my bill",
                                                      "details": {"k": 1}})
        for sid, delta in (("s_expired", -60), ("s_live", 3600)):
            await db.pool.execute("INSERT INTO sessions (id, tenant_id, redis_key, expires_at) VALUES ($1, $2, $3, $4)",
                                  f"{tenant}_{sid}", tenant, f"session:{tenant}_{sid}", NOW + timedelta(seconds=delta))
        return [c.id for c in calls]

    return run(with_db(settings, go))


def _call_ids(settings, tenant):
    async def go(db):
        return sorted(r["id"] for r in await db.pool.fetch("SELECT id FROM calls WHERE tenant_id = $1", tenant))

    return run(with_db(settings, go))


def test_cleanup_expires_sessions_archives_old_calls_and_removes_old_temp_files(ctx, asettings, warehouse, tenant_id):
    ids = _seed_calls(asettings, tenant_id)
    r = redis.Redis.from_url(asettings.redis_url)
    for sid in ("s_expired", "s_live"):
        r.set(f"session:{tenant_id}_{sid}", "{}")
    tmp = asettings.temp_dir
    (tmp / "nested").mkdir(parents=True)
    old, new = tmp / "nested" / "old.wav", tmp / "new.wav"
    old.write_bytes(b"x" * 100)
    new.write_bytes(b"y")
    stale = time.time() - 48 * 3600
    os.utime(old, (stale, stale))

    out = cleanup_expired_sessions(ctx)
    assert out["sessions_deleted"] == 1 and out["redis_keys_deleted"] == 1
    assert not r.exists(f"session:{tenant_id}_s_expired") and r.exists(f"session:{tenant_id}_s_live")
    assert out["calls_archived"] == 2 and out["calls_deleted"] == 2 and out["archive_failed"] == 0
    assert _call_ids(asettings, tenant_id) == [ids[2]]
    archived = {a["call_id"]: a for a in warehouse.archived_calls(tenant_id)}
    assert sorted(archived) == sorted(ids[:2])
    assert [t["text"] for t in json.loads(archived[ids[0]]["turns"])] == ["hello", "my bill"]
    assert json.loads(archived[ids[0]]["analytics"])["summary"] == "Customer: my bill"
    assert json.loads(archived[ids[1]]["call"])["customer_id"] == "u1"
    assert out["temp_files_deleted"] == 1 and out["temp_bytes_freed"] == 100
    assert not old.exists() and new.exists()
    again = cleanup_expired_sessions(ctx)
    assert again["calls_archived"] == 0 and again["sessions_deleted"] == 0
    r.close()


def test_cleanup_never_deletes_a_call_whose_archive_failed(ctx, asettings, tenant_id, tmp_path):
    """The archive table is replaced by one with other columns, so ClickHouse itself rejects the insert."""
    from raysys.actors.warehouse import warehouse

    broken = asettings.replace(clickhouse_url=f"chdb://{tmp_path / 'broken-chdb'}")
    ctx.settings = broken
    ids = _seed_calls(broken, tenant_id)
    broken_warehouse = Warehouse(broken)
    broken_warehouse.command("DROP TABLE IF EXISTS calls_archive")
    broken_warehouse.command("CREATE TABLE calls_archive (x UInt8) ENGINE = Memory")
    try:
        out = cleanup_expired_sessions(ctx)
        assert out["archive_failed"] == 2 and out["calls_archived"] == 0 and out["calls_deleted"] == 0
        assert out["errors"] and tenant_id in out["errors"][0]
        assert _call_ids(broken, tenant_id) == sorted(ids), "every call is still in PostgreSQL"

        async def turns(db):
            return len(await db.get_turns(tenant_id, ids[0]))

        assert run(with_db(broken, turns)) == 2
        # Once the archive works again, the next run archives and deletes them.
        broken_warehouse.command("DROP TABLE calls_archive")
        broken_warehouse.command(ARCHIVE_DDL)
        out = cleanup_expired_sessions(ctx)
        assert out["calls_archived"] == 2 and out["calls_deleted"] == 2 and out["archive_failed"] == 0
        assert _call_ids(broken, tenant_id) == [ids[2]]
    finally:
        ray.kill(warehouse(broken))


def _audit_set(path, text_encoder, rows, labels=None):
    path.mkdir(parents=True, exist_ok=True)
    with (path / "intents.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "category"])
        w.writerows(rows)
    texts, cats = zip(*SMALL_CATALOGUE, strict=True)
    IntentModel.train(list(texts), list(labels or cats), text_encoder.encode, threshold=0.0).save(path / "intent_model")
    return path


def test_audit_models_stores_accuracy_and_flags_a_regression(ctx, asettings, warehouse, tmp_path, text_encoder):
    held_out = [("someone took my card", "card_lost"), ("my parcel is late", "delivery_status"),
                ("I can't sign in, password rejected", "password_reset"), ("card stolen at the bar", "card_lost")]
    good = _audit_set(tmp_path / "good", text_encoder, held_out)
    ctx.settings = asettings.replace(audit_dir=str(good))
    first = audit_models(ctx)
    (res,) = [r for r in first["results"] if r["model"] == "intents"]
    assert res["metric"] == "accuracy" and res["value"] == 1.0
    assert "intents:accuracy" not in first["regressions"]
    # without a sentiment.csv the set raysys ships audits the sentiment model
    assert {(r["model"], r["metric"]) for r in first["results"]} == {
        ("intents", "accuracy"), ("sentiment", "accuracy"), ("sentiment", "macro_f1")}
    # A model trained on wrong labels: accuracy drops far beyond the threshold.
    wrong = [c for _, c in SMALL_CATALOGUE]
    wrong = wrong[4:] + wrong[:4]  # card_lost examples labelled delivery_status, and so on
    bad = _audit_set(tmp_path / "bad", text_encoder, held_out, labels=wrong)
    ctx.settings = asettings.replace(audit_dir=str(bad))
    second = audit_models(ctx)
    (res,) = [r for r in second["results"] if r["model"] == "intents"]
    assert res["value"] < 0.5 and res["baseline"] == 1.0 and res["regression"] is True
    assert second["regressions"] == ["intents:accuracy"]
    stored = warehouse.query("SELECT value, regression, version FROM model_audits WHERE run_id = {r:String} "
                             "AND model = 'intents'", {"r": second["run_id"]})
    assert stored == [{"value": res["value"], "regression": 1, "version": res["version"]}]
    ctx.settings = asettings.replace(audit_dir=str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="no audit set"):
        audit_models(ctx)


def test_audit_models_measures_der_and_speed_on_a_default_set_from_shared_data(ctx, asettings, warehouse, tmp_path):
    from conftest import SHARED_DATA, shared_data

    from raysys.analytics.audit import build_default_set

    shared_data("diarization", "sample.wav")
    audit_dir = build_default_set(SHARED_DATA, tmp_path / "audit", recordings=("sample",), per_intent=1,
                                  emotion_per_label=0)
    assert (audit_dir / "diarization" / "sample.rttm").is_file()
    assert len((audit_dir / "intents.csv").read_text().splitlines()) == 1 + 77
    ctx.settings = asettings.replace(audit_dir=str(audit_dir))
    out = audit_models(ctx)
    # no intent model configured, no emotion clips asked for: diarization and (always) sentiment
    (res,) = [r for r in out["results"] if r["model"] != "sentiment"]
    assert res["model"] == "diarization" and res["metric"] == "der"
    assert 0 <= res["value"] < 0.3 and 0 < res["rtf"] < 1
    row = warehouse.query("SELECT details FROM model_audits WHERE run_id = {r:String} AND model = 'diarization'",
                          {"r": out["run_id"]})
    assert json.loads(row[0]["details"])["files"] == ["sample.wav"]
