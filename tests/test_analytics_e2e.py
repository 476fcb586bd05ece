"""End to end: calls with real recordings and turns, jobs pushed to Redis, run by QueueBridges on Ray,
results in PostgreSQL and ClickHouse, a daily aggregation, and the report delivered to a real SMTP
server on loopback with the charts inline and the CSVs attached."""

from __future__ import annotations

import email
import shutil
from datetime import timedelta
from email import policy
from pathlib import Path

from analytics_fixtures import SMALL_CATALOGUE, rttm_turns, run, stereo_call, utc, with_db
from conftest import shared_data

from raysys.actors.warehouse import Warehouse
from raysys.analytics.intents import IntentModel
from raysys.analytics.report import CHARTS
from raysys.storage.postgres import Call, Turn

DAY = "2025-03-10"
START = utc(2025, 3, 10, 10, 0)


def test_calls_through_redis_to_postgres_clickhouse_metrics_and_emailed_report(
        asettings, ray_cluster, tenant_id, tmp_path, smtp_server, text_encoder):
    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.queue.client import Client

    url, mailbox = smtp_server
    texts, cats = zip(*SMALL_CATALOGUE, strict=True)
    IntentModel.train(list(texts), list(cats), text_encoder.encode).save(tmp_path / "intents" / tenant_id)
    settings = asettings.replace(smtp_url=url, report_sender="reports@raysys.test",
                                 intent_model_dir=str(tmp_path / "intents"))
    root = Path(settings.allowed_roots[0])
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data("diarization", "sample.wav"), root / "sample.wav")
    mono_turns = rttm_turns(shared_data("diarization", "sample.rttm"))
    stereo_turns = stereo_call(root / "stereo.wav")
    text_turns = [Turn(0, "agent", 0, 3, "Hello, how can I help?"),
                  Turn(1, "customer", 3, 8, "I forgot my password and the reset email never came")]
    ids = [f"{tenant_id}_mono", f"{tenant_id}_stereo", f"{tenant_id}_text"]

    async def seed(db):
        await db.upsert_tenant(tenant_id, "Acme", ["ops@acme.test"])
        calls = [Call(id=ids[0], tenant_id=tenant_id, customer_id="u1", started_at=START, answered_at=START,
                      ended_at=START + timedelta(seconds=30), audio_path=str(root / "sample.wav"), resolved=True),
                 Call(id=ids[1], tenant_id=tenant_id, customer_id="u2", started_at=START + timedelta(hours=2),
                      audio_path=str(root / "stereo.wav"), audio_layout="stereo", resolved=True, acw_seconds=20),
                 Call(id=ids[2], tenant_id=tenant_id, customer_id="u1", started_at=START + timedelta(hours=3),
                      answered_at=START + timedelta(hours=3), ended_at=START + timedelta(hours=3, seconds=60),
                      resolved=False)]
        await db.upsert_calls(calls)
        for cid, turns in zip(ids, (mono_turns, stereo_turns, text_turns), strict=True):
            await db.replace_turns(tenant_id, cid, turns)

    run(with_db(settings, seed))
    handles = start_bridges(settings, queues=["analytics", "reports"], concurrency=2)
    try:
        client = Client(settings)
        jobs = [client.send_task("workers.tasks.process_call_analytics", args=[cid]) for cid in ids]
        missing = client.send_task("process_call_analytics", args=["no-such-call"])
        results = [j.get(timeout=300) for j in jobs]
        assert [r["intent"] for r in results] == ["card_lost", "delivery_status", "password_reset"]
        assert [r["has_audio"] for r in results] == [True, True, False]
        assert results[0]["num_speakers"] == 2 and results[1]["num_speakers"] == 2
        missing.get(timeout=60, propagate=False)
        assert missing.state == "FAILURE" and "does not exist" in str(missing.result)

        async def stored(db):
            return [await db.get_analytics(tenant_id, cid) for cid in ids]

        rows = run(with_db(settings, stored))
        assert [r["intent"] for r in rows] == ["card_lost", "delivery_status", "password_reset"]
        assert rows[0]["diarization"]["segments"] and rows[1]["emotion"]["segments"] and rows[2]["emotion"] is None
        assert Warehouse(settings).count_call_facts(tenant_id) == 3

        agg = client.send_task("workers.tasks.aggregate_daily_metrics", kwargs={"date": DAY, "tenant_id": tenant_id})
        (metrics,) = agg.get(timeout=120)["metrics"]
        assert metrics["total_calls"] == 3 and metrics["fcr"] == 2 / 3
        assert sorted(tuple(t) for t in metrics["top_intents"]) == [("card_lost", 1), ("delivery_status", 1),
                                                                    ("password_reset", 1)]

        report = client.send_task("workers.tasks.generate_daily_report", args=[tenant_id], kwargs={"date": DAY})
        out = report.get(timeout=180)
        assert out["emailed"] is True and out["total_calls"] == 3
        client.close()
    finally:
        stop_bridges(handles)

    (sender, rcpts, raw), = mailbox.messages
    assert sender == "reports@raysys.test" and rcpts == ["ops@acme.test"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    html = msg.get_body(preferencelist=("html",)).get_content()
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == len(CHARTS)
    assert all(f'cid:{str(p["Content-ID"]).strip().strip("<>")}' in html for p in images)
    attachments = {p.get_filename(): p.get_payload(decode=True).decode() for p in msg.iter_attachments()}
    calls_csv = attachments["calls.csv"].splitlines()
    assert len(calls_csv) == 4 and all(any(cid in line for line in calls_csv) for cid in ids)
    assert f"{DAY},3," in attachments["metrics.csv"]
