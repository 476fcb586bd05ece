"""The HTTP API deployed on Ray Serve (session Ray cluster, real Redis/PostgreSQL/chDB), over HTTP.

One Serve app for the module (on a free port), two tenants with their own keys, a call each.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import db_call, new_database, shared_data
from waiting import wait_until

from raysys.config import Settings
from raysys.stack import free_port

pytestmark = pytest.mark.timeout(600)

UPLOAD_LIMIT = 1_000_000


def _healthy(http) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _succeeded(state: dict) -> dict | None:
    return state if state["state"] == "SUCCESS" else None


def _short_wav(seconds: float = 8.0) -> bytes:
    """``seconds`` of two-speaker speech from sample.wav (its first 6.6 s are silence)."""
    audio, sr = sf.read(str(shared_data("diarization", "sample.wav")), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, audio[6 * sr: int((6 + seconds) * sr)], sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class Api:
    def __init__(self, url: str, settings: Settings, keys: dict[str, str], calls: dict[str, str],
                 key_ids: dict[str, str]) -> None:
        self.url, self.settings, self.keys, self.calls, self.key_ids = url, settings, keys, calls, key_ids
        self.http = httpx.Client(base_url=url, timeout=300.0)

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


@pytest.fixture(scope="module")
def api(ray_cluster, redis_server, pg_server, chdb_dsn, tmp_path_factory):
    from ray import serve

    from raysys.serve import deploy
    from raysys.storage.postgres import Call, Turn

    data_dir = tmp_path_factory.mktemp("serve") / "data"
    settings = Settings.from_env(
        {}, data_dir=str(data_dir), broker_url=redis_server["url"], postgres_url=new_database(pg_server, "serve"),
        clickhouse_url=chdb_dsn, max_upload_bytes=UPLOAD_LIMIT, serve_host="127.0.0.1", serve_port=free_port(),
    )
    tenants = {"a": f"tenant_a_{uuid.uuid4().hex[:6]}", "b": f"tenant_b_{uuid.uuid4().hex[:6]}"}
    audio_dir = data_dir / "uploads" / "calls"
    audio_dir.mkdir(parents=True)
    (audio_dir / "call.wav").write_bytes(_short_wav(8.0))
    now = datetime.now(UTC).replace(microsecond=0)

    async def seed(db):
        keys, key_ids, calls = {}, {}, {}
        for t, tenant in tenants.items():
            key_ids[t], keys[t] = await db.create_api_key(tenant, name="test")
            call = Call(id=f"call_{t}_{uuid.uuid4().hex[:8]}", tenant_id=tenant, customer_id=f"cust_{t}",
                        agent_id="agent_1", started_at=now - timedelta(minutes=5), answered_at=now - timedelta(minutes=5),
                        ended_at=now, audio_path=str(audio_dir / "call.wav"), audio_layout="mono",
                        intent="card_lost", resolved=True)
            await db.upsert_calls([call])
            await db.replace_turns(tenant, call.id, [
                Turn(0, "agent", 0.0, 3.0, "Thank you for calling, how can I help you today?"),
                Turn(1, "customer", 3.0, 8.0, "I lost my card yesterday and I need to block it."),
            ])
            calls[t] = call.id
        return keys, key_ids, calls

    keys, key_ids, calls = db_call(settings.postgres_url, seed)
    # A bridge on the ingest queue (where raysys.ping is routed), so enqueued jobs really run.
    from raysys.queue.bridge import start_bridges, stop_bridges

    bridges = start_bridges(settings, queues=["ingest"], concurrency=2)
    serve.start(http_options={"host": "127.0.0.1", "port": settings.serve_port})
    url = deploy(settings)
    assert url == f"http://127.0.0.1:{settings.serve_port}"
    client = Api(url, settings, {t: keys[t] for t in keys}, calls, key_ids)
    client.tenants = tenants
    wait_until(lambda: _healthy(client.http), 120, 0.5, message="the API to answer /healthz")
    yield client
    client.http.close()
    serve.shutdown()
    stop_bridges(bridges)


# --- health, docs ---------------------------------------------------------------------------------------


def test_healthz_and_openapi_docs(api):
    assert api.http.get("/healthz").json() == {"status": "ok"}
    spec = api.http.get("/openapi.json").json()
    for path in ("/v1/calls/{call_id}/analytics", "/v1/diarize", "/v1/emotion", "/v1/tasks/{name}",
                 "/v1/jobs/{job_id}", "/v1/metrics/daily", "/v1/metrics/agents", "/v1/search", "/readyz"):
        assert path in spec["paths"], path
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} >= {"http", "apiKey"}
    docs = api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_readyz_turns_ready_once_dependencies_and_models_are_up(api):
    deadline = time.monotonic() + 240
    while True:
        r = api.http.get("/readyz")
        body = r.json()
        assert set(body["checks"]) == {"redis", "postgres", "warehouse", "models"}
        assert r.status_code == (200 if body["ready"] else 503)
        if body["ready"] or time.monotonic() > deadline:
            break
        assert body["checks"]["models"] != "ok"  # only the models may still be loading
        time.sleep(1)
    assert r.status_code == 200 and all(v == "ok" for v in body["checks"].values()), body


def test_readyz_is_503_when_redis_is_down(api):
    """In-process app over the same PostgreSQL, with Redis pointing at a closed port."""
    from fastapi.testclient import TestClient

    from raysys.serve.app import create_app
    from raysys.serve.service import Service

    service = Service(api.settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    with TestClient(create_app(service)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["checks"]["redis"] != "ok" and body["checks"]["postgres"] == "ok"
    assert "Traceback" not in r.text


# --- auth --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer rsk_not-a-real-key"},
    {"X-API-Key": "rsk_wrong"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
])
def test_missing_or_wrong_key_is_401_with_json(api, headers):
    r = api.http.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers)
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "Unauthorized" and body["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_both_header_forms_authenticate(api):
    job = api.http.post("/v1/tasks/raysys.ping", json={"args": ["x"]}, headers=api.auth("a")).json()["job_id"]
    for headers in (api.auth("a"), {"X-API-Key": api.keys["a"]}):
        assert api.http.get(f"/v1/jobs/{job}", headers=headers).status_code == 200


def test_revoked_key_is_refused_on_the_next_request(api):
    tenant = api.tenants["a"]
    key_id, secret = db_call(api.settings.postgres_url, lambda db: db.create_api_key(tenant, name="short-lived"))
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.http.get("/v1/tasks", headers=headers).status_code == 200
    assert db_call(api.settings.postgres_url, lambda db: db.revoke_api_key(tenant, key_id))
    r = api.http.get("/v1/tasks", headers=headers)
    assert r.status_code == 401 and r.json()["detail"] == "the API key is unknown or revoked"


def test_apikey_cli_create_prints_secret_once_and_revoke_works(api, capsys, monkeypatch):
    from raysys.cli import main

    for name, value in api.settings.to_env().items():  # the CLI builds its settings from the environment
        monkeypatch.setenv(name, value)
    tenant = api.tenants["b"]
    assert main(["apikey", "create", "--tenant", tenant, "--name", "cli"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("rsk_") and secret not in out.err
    assert api.http.get("/v1/tasks", headers={"X-API-Key": secret}).status_code == 200
    assert main(["apikey", "revoke", "--tenant", tenant, secret[:10]]) == 0
    assert main(["apikey", "revoke", "--tenant", tenant, secret[:10]]) == 1  # already revoked
    assert api.http.get("/v1/tasks", headers={"X-API-Key": secret}).status_code == 401


# --- jobs ----------------------------------------------------------------------------------------------------


def test_enqueue_writes_a_celery_message_and_job_state_is_tenant_scoped(api):
    import redis

    # The analytics queue has no bridge in this module, so the message stays where the producer put it.
    r = api.http.post("/v1/tasks/process_call_analytics", json={"args": [api.calls["a"]]}, headers=api.auth("a"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["task"] == "workers.tasks.process_call_analytics" and body["state"] == "PENDING"
    assert body["queue"] == "analytics"
    job_id = body["job_id"]
    # The message is a Celery protocol v2 envelope on the queue's Redis list, as a Celery producer writes it.
    rc = redis.Redis.from_url(api.settings.redis_url)
    raw = [json.loads(m) for m in rc.lrange("analytics", 0, -1)]
    assert any(m["headers"]["id"] == job_id and m["headers"]["task"] == body["task"] for m in raw)

    state = api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("a"))
    assert state.status_code == 200 and state.json() == {"job_id": job_id, "state": "PENDING", "ready": False}
    # Another tenant's key cannot see it: 404 exactly as for a job that does not exist.
    other = api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("b"))
    missing = api.http.get(f"/v1/jobs/{uuid.uuid4()}", headers=api.auth("b"))
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"] == "NotFound"

    # A finished job's result (written in Celery's result format) comes back; a failure has no traceback.
    rc.setex(f"celery-task-meta-{job_id}", 60, json.dumps(
        {"task_id": job_id, "status": "SUCCESS", "result": {"intent": "card_lost"}, "traceback": None,
         "children": [], "date_done": datetime.now(UTC).isoformat()}))
    assert api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("a")).json()["result"] == {"intent": "card_lost"}
    rc.setex(f"celery-task-meta-{job_id}", 60, json.dumps(
        {"task_id": job_id, "status": "FAILURE", "traceback": "Traceback (most recent call last): secret",
         "result": {"exc_type": "InvalidInput", "exc_message": ["bad audio"], "exc_module": "raysys.errors"}}))
    failed = api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("a")).json()
    assert failed["state"] == "FAILURE" and failed["error"] == {"type": "InvalidInput", "message": "bad audio"}
    assert "Traceback" not in json.dumps(failed)
    rc.close()


def test_enqueued_job_runs_and_its_result_is_read_back(api):
    r = api.http.post("/v1/tasks/ping", json={"kwargs": {"value": {"n": 7}}}, headers=api.auth("b"))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    state = wait_until(lambda: _succeeded(api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("b")).json()), 60,
                       0.2, message=f"job {job_id} to succeed")
    assert state["state"] == "SUCCESS" and state["ready"] and state["result"] == {"n": 7}, state
    assert api.http.get(f"/v1/jobs/{job_id}", headers=api.auth("a")).status_code == 404


def test_unknown_task_is_404_and_bad_arguments_422(api):
    r = api.http.post("/v1/tasks/workers.tasks.no_such_task", json={}, headers=api.auth("a"))
    assert r.status_code == 404 and r.json()["error"] == "UnknownTask"
    r = api.http.post("/v1/tasks/raysys.ping", json={"args": [1, 2, 3]}, headers=api.auth("a"))
    assert r.status_code == 422 and r.json()["error"] == "InvalidInput"
    r = api.http.post("/v1/tasks/raysys.ping", json={"priority": 42}, headers=api.auth("a"))
    assert r.status_code == 422 and "priority" in r.json()["detail"]


def test_call_scoped_tasks_refuse_another_tenants_call(api):
    r = api.http.post("/v1/tasks/process_call_analytics", json={"args": [api.calls["a"]]}, headers=api.auth("b"))
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    ok = api.http.post("/v1/tasks/process_call_analytics", json={"args": [api.calls["b"]]}, headers=api.auth("b"))
    assert ok.status_code == 202 and ok.json()["queue"] == "analytics"


def test_tenant_scoped_task_cannot_name_another_tenant(api):
    r = api.http.post("/v1/tasks/aggregate_daily_metrics", json={"kwargs": {"tenant_id": api.tenants["a"]}},
                      headers=api.auth("b"))
    assert r.status_code == 404
    ok = api.http.post("/v1/tasks/aggregate_daily_metrics", json={}, headers=api.auth("b"))
    assert ok.status_code == 202, ok.text


# --- calls -----------------------------------------------------------------------------------------------------


def test_analytics_of_another_tenants_call_is_404(api):
    for wait in ("true", "false"):
        r = api.http.post(f"/v1/calls/{api.calls['a']}/analytics?wait={wait}", headers=api.auth("b"))
        assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert api.http.get(f"/v1/calls/{api.calls['a']}/analytics", headers=api.auth("b")).status_code == 404


def test_analytics_enqueue_returns_a_job_id(api):
    r = api.http.post(f"/v1/calls/{api.calls['a']}/analytics?wait=false", headers=api.auth("a"))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["task"] == "workers.tasks.process_call_analytics" and job["queue"] == "analytics"
    assert api.http.get(job["status_url"], headers=api.auth("a")).status_code == 200


def test_analytics_on_demand_waits_for_the_result_and_stores_it(api):
    r = api.http.post(f"/v1/calls/{api.calls['a']}/analytics?wait=true&timeout=240", headers=api.auth("a"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "SUCCESS" and body["call_id"] == api.calls["a"] and body["result"] is not None
    stored = api.http.get(f"/v1/calls/{api.calls['a']}/analytics", headers=api.auth("a"))
    assert stored.status_code == 200 and stored.json()["call_id"] == api.calls["a"]


# --- recordings ------------------------------------------------------------------------------------------------


def test_diarize_upload(api):
    r = api.http.post("/v1/diarize", files={"file": ("call.wav", _short_wav(8.0), "audio/wav")},
                      data={"max_speakers": "3"}, headers=api.auth("a"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_speakers"] >= 1 and body["segments"]
    assert all(0 <= s["start"] < s["end"] <= body["duration"] + 0.01 for s in body["segments"])
    # The upload is not kept once answered.
    assert not list((Path(api.settings.data_dir) / "uploads" / api.tenants["a"]).glob("*"))


def test_emotion_upload(api):
    wav = _short_wav(6.0)
    r = api.http.post("/v1/emotion", files={"file": ("call.wav", wav, "audio/wav")}, headers=api.auth("a"))
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    assert segments and all(-1.0 <= s["valence"] <= 1.0 and 0.0 <= s["arousal"] <= 1.0 for s in segments)
    assert all(set(s["scores"]) and s["label"] in s["scores"] for s in segments)
    whole = api.http.post("/v1/emotion", files={"file": ("call.wav", wav, "audio/wav")}, data={"diarize": "false"},
                          headers=api.auth("a"))
    assert whole.status_code == 200, whole.text
    (one,) = whole.json()["segments"]
    assert one["start"] == 0.0 and abs(one["end"] - 6.0) < 0.05


def test_oversize_upload_is_413(api):
    big = b"RIFF" + (UPLOAD_LIMIT + 10).to_bytes(4, "little") + b"WAVE" + bytes(UPLOAD_LIMIT + 10)
    for route in ("/v1/diarize", "/v1/emotion"):
        r = api.http.post(route, files={"file": ("big.wav", big, "audio/wav")}, headers=api.auth("a"))
        assert r.status_code == 413, (route, r.text)
        assert r.json()["error"] == "TooLarge"
    # A body far over the limit is refused from its Content-Length, before it is read.
    huge = b"RIFF" + bytes(4) + b"WAVE" + bytes(3 * UPLOAD_LIMIT)
    r = api.http.post("/v1/diarize", files={"file": ("huge.wav", huge, "audio/wav")}, headers=api.auth("a"))
    assert r.status_code == 413 and r.json()["error"] == "TooLarge"
    # Just over the file limit but within the multipart slack: refused by the streaming count, not the framing.
    edge = b"RIFF" + bytes(4) + b"WAVE" + bytes(UPLOAD_LIMIT - 11)
    r = api.http.post("/v1/diarize", files={"file": ("edge.wav", edge, "audio/wav")}, headers=api.auth("a"))
    assert r.status_code == 413 and "1000000-byte" in r.json()["detail"]


def test_wrong_type_upload_is_415_whatever_the_name_says(api):
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    for route in ("/v1/diarize", "/v1/emotion"):
        r = api.http.post(route, files={"file": ("call.wav", pdf, "audio/wav")}, headers=api.auth("a"))
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "UnsupportedMedia"


def test_corrupt_audio_is_422_without_a_traceback(api):
    junk = b"RIFF" + (1000).to_bytes(4, "little") + b"WAVEfmt " + bytes(300)
    r = api.http.post("/v1/diarize", files={"file": ("junk.wav", junk, "audio/wav")}, headers=api.auth("a"))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "InvalidInput" and "Traceback" not in r.text


def test_upload_needs_a_key(api):
    r = api.http.post("/v1/diarize", files={"file": ("call.wav", b"RIFF0000WAVE", "audio/wav")})
    assert r.status_code == 401


# --- metrics and search ----------------------------------------------------------------------------------------


def test_daily_metrics_are_the_tenants_own(api):
    from raysys.actors.warehouse import Warehouse
    from raysys.storage.warehouse import DAILY_COLUMNS

    day = date(2026, 3, 2)
    rows = []
    for t, total in (("a", 11), ("b", 99)):
        rows.append([api.tenants[t], day, total, 300.0, 500.0, 0.8, 1, 0.2, [("card_lost", total)], [0] * 24,
                     datetime.now(UTC)])
    Warehouse(api.settings).insert("daily_metrics", rows, DAILY_COLUMNS)
    r = api.http.get("/v1/metrics/daily", params={"start": "2026-03-01", "end": "2026-03-03"}, headers=api.auth("a"))
    assert r.status_code == 200, r.text
    days = r.json()["days"]
    assert [d["total_calls"] for d in days] == [11] and days[0]["day"] == "2026-03-02"
    assert days[0]["tenant_id"] == api.tenants["a"]
    bad = api.http.get("/v1/metrics/daily", params={"start": "2026-03-03", "end": "2026-03-01"}, headers=api.auth("a"))
    assert bad.status_code == 422
    assert api.http.get("/v1/metrics/daily", params={"start": "nope"}, headers=api.auth("a")).status_code == 422


def test_agent_metrics_are_the_tenants_own(api):
    from raysys.actors.warehouse import Warehouse

    day = date(2026, 3, 2)
    facts = [{"tenant_id": api.tenants[t], "call_id": f"{t}{k}", "started_at": datetime(2026, 3, 2, 9, k, tzinfo=UTC),
              "customer_id": f"{t}{k}", "agent_id": agent, "intent": "card_lost", "resolved": True, "aht_seconds": aht}
             for t, k, agent, aht in (("a", 1, "a1", 100.0), ("a", 2, "a1", 300.0), ("a", 3, "shared", 50.0),
                                      ("b", 1, "shared", 900.0), ("b", 2, "b1", 10.0))]
    warehouse = Warehouse(api.settings)
    warehouse.insert_call_facts(facts)
    for t in ("a", "b"):
        warehouse.aggregate_agents(day, day, 7, api.tenants[t])
    r = api.http.get("/v1/metrics/agents", params={"day": "2026-03-02"}, headers=api.auth("a"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == api.tenants["a"] and body["day"] == "2026-03-02"
    assert [(x["agent_id"], x["calls"], x["aht_mean"]) for x in body["agents"]] == [("a1", 2, 200.0), ("shared", 1, 50.0)]
    assert {x["tenant_id"] for x in body["agents"]} == {api.tenants["a"]}
    b = api.http.get("/v1/metrics/agents", params={"day": "2026-03-02", "agent_id": "shared"}, headers=api.auth("b"))
    assert [(x["agent_id"], x["aht_mean"]) for x in b.json()["agents"]] == [("shared", 900.0)]
    other = api.http.get("/v1/metrics/agents", params={"day": "2026-03-02", "agent_id": "b1"}, headers=api.auth("a"))
    assert other.status_code == 200 and other.json()["agents"] == []
    for bad in ("2026-02-30", "nope", "03/02/2026"):
        r = api.http.get("/v1/metrics/agents", params={"day": bad}, headers=api.auth("a"))
        assert r.status_code == 422 and r.json()["error"] == "InvalidInput", bad
    assert api.http.get("/v1/metrics/agents", params={"day": "2026-03-02"}).status_code == 401


def test_search_finds_the_tenants_documents_only(api):
    from raysys.ingest.pipeline import ingest_document

    doc = Path(api.settings.data_dir) / "documents" / "cards.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("# Lost cards\n\nIf your card is lost or stolen, block it at once in the app under Cards > Block. "
                   "A new card arrives within five working days.\n\n# Fees\n\nTransfers abroad cost 1 %.\n")
    ingest_document(api.settings, api.tenants["a"], str(doc), "doc_cards")
    r = api.http.get("/v1/search", params={"q": "my card was stolen, how do I block it", "k": 3}, headers=api.auth("a"))
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and hits[0]["document_id"] == "doc_cards" and "block" in hits[0]["text"].lower()
    other = api.http.get("/v1/search", params={"q": "my card was stolen"}, headers=api.auth("b"))
    assert other.status_code == 200 and other.json()["hits"] == []
    assert api.http.get("/v1/search", params={"q": ""}, headers=api.auth("a")).status_code == 422


def test_system_tasks_and_paths_outside_the_roots_are_403(api):
    r = api.http.post("/v1/tasks/cleanup_expired_sessions", json={}, headers=api.auth("a"))
    assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    r = api.http.post("/v1/tasks/ingest_document", headers=api.auth("a"),
                      json={"kwargs": {"document_id": "d1", "source_path": "/etc/passwd"}})
    assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    names = {t["name"] for t in api.http.get("/v1/tasks", headers=api.auth("a")).json()}
    assert "workers.tasks.process_call_analytics" in names and "workers.tasks.cleanup_expired_sessions" not in names


def test_unknown_route_is_json_404(api):
    r = api.http.get("/v1/nothing-here", headers=api.auth("a"))
    assert r.status_code == 404 and r.json()["error"] == "NotFound"


def test_sniffing_accepts_decodable_audio_only():
    from raysys.serve.uploads import sniff_audio

    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype="float32"), 16000, format="FLAC")
    assert sniff_audio(buf.getvalue()[:64]) == "flac"
    assert sniff_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_audio(b"ID3\x04\x00") == "mp3"
    assert sniff_audio(b"OggS\x00\x02") == "ogg"
    assert sniff_audio(b"%PDF-1.7") is None
    assert sniff_audio(b"RIFF\x00\x00\x00\x00AVI LIST") is None
    assert sniff_audio(b"\x89PNG\r\n\x1a\n") is None
