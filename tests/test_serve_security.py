"""The API's edge under attack by a tenant with a valid key, or by no one at all (issue 13).

One Serve app for the module on a free port (session Ray cluster, real Redis, PostgreSQL and chDB),
with bridges on the ingest and analytics queues so enqueued jobs really run. Two tenants, each with
a key, a call whose recording lies in the tenant's own folder, and documents in its own folder.

The limits are set low here (1 request/s per key with bursts of 30, 3 requests in progress per
tenant, 1 wait=true analytics per tenant) so the tests can reach them; the client helper honours
``Retry-After`` the way a well-behaved client does, except where a test looks for the 429 itself.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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

pytestmark = pytest.mark.timeout(900)

UPLOAD_LIMIT = 2_000_000
REQUEST_LIMIT = 64 * 1024
TENANT_CONCURRENCY = 3


def _speech_wav(seconds: float = 8.0) -> bytes:
    audio, sr = sf.read(str(shared_data("diarization", "sample.wav")), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, audio[6 * sr: int((6 + seconds) * sr)], sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class Api:
    def __init__(self, url: str, port: int, settings: Settings) -> None:
        self.url, self.port, self.settings = url, port, settings
        self.http = httpx.Client(base_url=url, timeout=300.0)
        self.keys: dict[str, str] = {}
        self.tenants: dict[str, str] = {}
        self.calls: dict[str, str] = {}
        self.audio: dict[str, Path] = {}
        self.docs: dict[str, Path] = {}

    def auth(self, t: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[t]}"}

    def request(self, method: str, path: str, t: str | None = None, **kw) -> httpx.Response:
        """A request as tenant ``t`` that waits out the key's rate limit as Retry-After says (a polite client).

        Other 429s (a tenant's slots taken) are returned: some tests look for them.
        """
        headers = {**kw.pop("headers", {}), **(self.auth(t) if t else {})}
        deadline = time.monotonic() + 120
        while True:
            r = self.http.request(method, path, headers=headers, **kw)
            if r.status_code != 429 or "per second" not in r.text or time.monotonic() > deadline:
                return r
            time.sleep(float(r.headers.get("retry-after", "1")))

    def job(self, t: str, job_id: str, timeout: float = 300) -> dict:
        """Poll a job until it is ready (at most one request per second: the module's rate)."""
        def ready():
            state = self.request("GET", f"/v1/jobs/{job_id}", t).json()
            return state if state.get("ready") else None

        return wait_until(ready, timeout, interval=1.0, message=f"job {job_id} ready")

    def redis(self):
        import redis

        return redis.Redis.from_url(self.settings.redis_url)


@pytest.fixture(scope="module")
def api(ray_cluster, redis_server, pg_server, chdb_dsn, tmp_path_factory):
    from ray import serve

    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.serve import deploy
    from raysys.storage.postgres import Call, Turn

    data_dir = tmp_path_factory.mktemp("serve-security") / "data"
    port = free_port()
    settings = Settings.from_env(
        {}, data_dir=str(data_dir), broker_url=redis_server["url"],
        postgres_url=new_database(pg_server, "servesec"), clickhouse_url=chdb_dsn,
        max_upload_bytes=UPLOAD_LIMIT, max_request_bytes=REQUEST_LIMIT, api_rate_limit=1.0, api_rate_burst=30,
        api_tenant_concurrency=TENANT_CONCURRENCY, api_tenant_wait_slots=1, serve_host="127.0.0.1", serve_port=port,
    )
    client = Api(f"http://127.0.0.1:{port}", port, settings)
    client.tenants = {"a": f"tenant_a_{uuid.uuid4().hex[:6]}", "b": f"tenant_b_{uuid.uuid4().hex[:6]}"}
    uploads_root, documents_root = (Path(r) for r in settings.allowed_roots)
    now = datetime.now(UTC).replace(microsecond=0)
    for t, tenant in client.tenants.items():
        audio = uploads_root / tenant / "calls" / "call.wav"
        audio.parent.mkdir(parents=True)
        audio.write_bytes(_speech_wav(8.0))
        client.audio[t] = audio
        docs = documents_root / tenant
        docs.mkdir(parents=True)
        client.docs[t] = docs

    async def seed(db):
        for t, tenant in client.tenants.items():
            _, client.keys[t] = await db.create_api_key(tenant, name="test")
            call = Call(id=f"call_{t}_{uuid.uuid4().hex[:8]}", tenant_id=tenant, customer_id=f"cust_{t}",
                        agent_id="agent_1", started_at=now - timedelta(minutes=5), answered_at=now - timedelta(minutes=5),
                        ended_at=now, audio_path=str(client.audio[t]), audio_layout="mono", intent="card_lost",
                        resolved=True)
            await db.upsert_calls([call])
            await db.replace_turns(tenant, call.id, [
                Turn(0, "agent", 0.0, 3.0, "Thank you for calling, how can I help you today?"),
                Turn(1, "customer", 3.0, 8.0, "I lost my card yesterday and I need to block it."),
            ])
            client.calls[t] = call.id

    db_call(settings.postgres_url, seed)
    bridges = start_bridges(settings, queues=["ingest", "analytics"], concurrency=2)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    assert deploy(settings) == client.url

    def healthy():
        try:
            return client.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 120, 0.5, message="API up")
    yield client
    client.http.close()
    serve.shutdown()
    stop_bridges(bridges)


def _raw_request(api: Api, head: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send only ``head`` (request line and headers) on a fresh socket and read the answer.

    The body the headers announce is never sent: an answer proves the server decided without it.
    Raises socket.timeout when the server waits for the body instead.
    """
    with socket.create_connection(("127.0.0.1", api.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        header_block, _, body = rest.partition(b"\r\n\r\n")
        headers = {}
        for line in header_block.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split()[1]), headers, body


def _head(api: Api, path: str, length: int, content_type: str = "application/json", key: str | None = None) -> str:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{api.port}", f"Content-Type: {content_type}",
             f"Content-Length: {length}"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return "\r\n".join(lines) + "\r\n\r\n"


# --- 1. a tenant is bound once, at the edge -------------------------------------------------------------


@pytest.mark.parametrize("shape", ["positional-null", "keyword-null", "absent"])
def test_aggregate_daily_metrics_returns_only_the_callers_tenant(api, shape):
    from raysys.actors.warehouse import Warehouse

    day = date(2026, 2, 1) + timedelta(days=["positional-null", "keyword-null", "absent"].index(shape))
    started = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    Warehouse(api.settings).insert_call_facts([
        {"tenant_id": api.tenants[t], "call_id": f"{t}_{shape}_{i}", "started_at": started + timedelta(minutes=i),
         "customer_id": f"c{i}", "intent": "billing", "resolved": True, "aht_seconds": 100.0 * (i + 1)}
        for t in ("a", "b") for i in range(2)])
    body = {"positional-null": {"args": [day.isoformat(), None]},
            "keyword-null": {"kwargs": {"date": day.isoformat(), "tenant_id": None}},
            "absent": {"args": [day.isoformat()]}}[shape]
    r = api.request("POST", "/v1/tasks/aggregate_daily_metrics", "a", json=body)
    assert r.status_code == 202, r.text
    state = api.job("a", r.json()["job_id"])
    assert state["state"] == "SUCCESS", state
    tenants = {m["tenant_id"] for m in state["result"]["metrics"]}
    assert tenants == {api.tenants["a"]}, f"the job aggregated other tenants: {tenants}"


def test_a_tenant_id_of_another_tenant_is_404_in_any_position(api):
    for body in ({"args": ["2026-02-01", api.tenants["b"]]}, {"kwargs": {"tenant_id": api.tenants["b"]}}):
        r = api.request("POST", "/v1/tasks/aggregate_daily_metrics", "a", json=body)
        assert r.status_code == 404 and r.json()["error"] == "NotFound", r.text
    r = api.request("POST", "/v1/tasks/ingest_batch", "a", json={"args": [api.tenants["b"], ["x.md"]]})
    assert r.status_code == 404, r.text


# --- 2. paths: the tenant's own folders; a call's audio from the call only ------------------------------


def test_ingest_cannot_reach_another_tenants_documents_and_search_stays_own(api):
    (api.docs["a"] / "own.md").write_text("# Opening hours\n\nThe branch in Quillfield opens at nine o'clock "
                                          "on weekdays and closes at five.\n")
    secret = api.docs["b"] / "secret.md"
    secret.write_text("# Merger plan\n\nProject Zanzibar-Heron acquires the Vostok pension fund in March.\n")
    documents_root = api.docs["a"].parent
    refused = [
        ("ingest_batch", {"args": [None, [str(api.docs["b"])]]}),                  # the other tenant's folder
        ("ingest_batch", {"args": [api.tenants["a"], [str(documents_root)]]}),      # the whole documents root
        ("ingest_batch", {"kwargs": {"source_paths": [f"../{api.tenants['b']}/secret.md"]}}),  # relative escape
        ("ingest_batch", {"kwargs": {"source_paths": str(secret)}}),                # a single path as a string
        ("ingest_document", {"kwargs": {"document_id": "d1", "source_path": str(secret)}}),
    ]
    for task, body in refused:
        r = api.request("POST", f"/v1/tasks/{task}", "a", json=body)
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", (task, body, r.text)

    # A link inside the tenant's own folder to the other tenant's file is refused when the folder is expanded.
    os.symlink(secret, api.docs["a"] / "link.md")
    r = api.request("POST", "/v1/tasks/ingest_batch", "a", json={"args": [None, [str(api.docs["a"])]]})
    assert r.status_code == 202, r.text
    state = api.job("a", r.json()["job_id"], timeout=600)
    assert state["state"] == "SUCCESS", state
    by_name = {Path(d["source_path"]).name: d for d in state["result"]["documents"]}
    assert by_name["own.md"]["status"] == "ingested"
    assert by_name["link.md"]["status"] == "failed" and by_name["link.md"]["error"]["type"] == "Forbidden"

    hits = api.request("GET", "/v1/search", "a", params={"q": "when does the Quillfield branch open"}).json()["hits"]
    assert any("Quillfield" in h["text"] for h in hits), hits
    leaked = api.request("GET", "/v1/search", "a", params={"q": "Zanzibar-Heron merger Vostok pension fund",
                                                           "k": 50}).json()["hits"]
    assert not any("Zanzibar" in h["text"] for h in leaked), leaked


@pytest.mark.parametrize("task", ["diarize_call", "analyze_emotion"])
def test_call_tasks_read_only_the_calls_stored_recording(api, task):
    other = api.audio["a"].parent / "other.wav"
    other.write_bytes(api.audio["a"].read_bytes())
    for path in (str(api.audio["b"]),                                   # the other tenant's recording
                 f"../../{api.tenants['b']}/calls/call.wav",            # the same, relative
                 str(other)):                                           # a file of the tenant, not the call's
        r = api.request("POST", f"/v1/tasks/{task}", "a", json={"args": [api.calls["a"], path]})
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", (path, r.text)
    r = api.request("POST", f"/v1/tasks/{task}", "a", json={"kwargs": {"call_id": api.calls["a"],
                                                                       "audio_path": str(api.audio["a"])}})
    assert r.status_code == 202, r.text


# --- 3. key and size checked before any body byte is read -----------------------------------------------


def test_unauthenticated_gigabyte_body_is_answered_before_it_is_sent(api):
    status, headers, body = _raw_request(api, _head(api, "/v1/tasks/raysys.ping", 1_000_000_000))
    assert status == 401 and json.loads(body)["error"] == "Unauthorized"
    assert headers.get("www-authenticate") == "Bearer"
    # A wrong key, and an upload (multipart) within the size limit: refused before the file is read.
    status, _, _ = _raw_request(api, _head(api, "/v1/tasks/raysys.ping", 1_000_000_000, key="rsk_nope"))
    assert status == 401
    status, _, body = _raw_request(api, _head(api, "/v1/diarize", UPLOAD_LIMIT // 2,
                                              "multipart/form-data; boundary=xyz"))
    assert status == 401 and json.loads(body)["error"] == "Unauthorized"


def test_task_bodies_have_a_limit_announced_or_streamed(api):
    # Announced: answered from the headers, the body never sent.
    status, _, body = _raw_request(api, _head(api, "/v1/tasks/raysys.ping", 10 * REQUEST_LIMIT, key=api.keys["a"]))
    assert status == 413 and json.loads(body)["error"] == "TooLarge"
    # Announced by a real client that sends it all.
    big = {"args": ["x" * (2 * REQUEST_LIMIT)]}
    r = api.request("POST", "/v1/tasks/raysys.ping", "a", json=big)
    assert r.status_code == 413 and r.json()["error"] == "TooLarge"

    # Streamed without a length (chunked): counted as it arrives, stopped past the limit.
    def chunks():
        yield b'{"args": ["'
        for _ in range(2 * REQUEST_LIMIT // 1024):
            yield b"y" * 1024
        yield b'"]}'

    r = api.request("POST", "/v1/tasks/raysys.ping", "a", content=chunks(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "TooLarge", r.text
    # Under the limit, the same route works.
    assert api.request("POST", "/v1/tasks/raysys.ping", "a", json={"args": ["small"]}).status_code == 202


# --- 4. a small file that decodes to hours is refused from its header -----------------------------------


def _ten_hour_silent_flac() -> bytes:
    """Ten hours of digital silence at 8 kHz as FLAC: under a megabyte, 1.15 GB as float32 samples."""
    rate = 8000
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(rate * 600, dtype="int16")
        for _ in range(60):
            f.write(block)
    return buf.getvalue()


def _replica_peak_rss() -> int:
    """Peak resident memory (VmHWM, bytes) of this session's API replica processes.

    Ray's processes are descendants of this test process (``ray.init`` started them), so other
    sessions' Serve replicas on the machine are not counted.
    """
    import psutil

    peak = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ServeReplica:raysys:raysys-api" not in " ".join(proc.cmdline()):
                continue
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except (psutil.Error, OSError):
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        peak = max(peak, kb * 1024)
    return peak


def test_ten_hour_silent_flac_is_refused_while_the_api_keeps_answering(api):
    flac = _ten_hour_silent_flac()
    assert len(flac) < UPLOAD_LIMIT
    before = _replica_peak_rss()
    assert before > 0, "the API replica's process was not found"
    for route in ("/v1/diarize", "/v1/emotion"):
        result: dict = {}

        def upload(route=route, result=result):
            result["r"] = httpx.post(api.url + route, files={"file": ("long.flac", flac, "audio/flac")},
                                     headers=api.auth("a"), timeout=120)

        thread = threading.Thread(target=upload)
        thread.start()
        while thread.is_alive():  # the replica keeps serving while it handles the upload
            assert api.http.get("/healthz", timeout=10).status_code == 200
            time.sleep(0.2)
        thread.join()
        r = result["r"]
        assert r.status_code == 413 and r.json()["error"] == "TooLarge", r.text
        assert "MAX_AUDIO_SECONDS" in r.json()["detail"]
    # Refused from the header: the samples (1.15 GB as float32) were never decoded in the replica.
    grown = _replica_peak_rss() - before
    assert grown < 300 * 1024 * 1024, f"the replica's peak memory grew by {grown / 2**20:.0f} MiB"


# --- 5. rate limits and concurrency caps ---------------------------------------------------------------


def test_requests_per_key_are_rate_limited_with_retry_after(api):
    tenant = api.tenants["a"]
    _, key = db_call(api.settings.postgres_url, lambda db: db.create_api_key(tenant, name="burst"))
    _, calm = db_call(api.settings.postgres_url, lambda db: db.create_api_key(tenant, name="calm"))
    headers = {"X-API-Key": key}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: api.http.get("/v1/tasks", headers=headers), range(60)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.json()["error"] == "Limited" and int(limited.headers["retry-after"]) >= 1
    # The limit is per key: the tenant's other key is not held back.
    assert api.http.get("/v1/tasks", headers={"X-API-Key": calm}).status_code == 200
    # And it passes: after Retry-After the same key is served again.
    time.sleep(int(limited.headers["retry-after"]))
    wait_until(lambda: api.http.get("/v1/tasks", headers=headers).status_code == 200, 30, 1.0, message="key served again")


def test_requests_in_progress_are_capped_per_tenant(api):
    rc = api.redis()
    slots = f"{api.settings.key_prefix}raysys:api-limit:slots:requests:{api.tenants['b']}"
    socks = []
    try:
        # Uploads whose bodies never come: each holds one of tenant b's slots while the route waits.
        for _ in range(TENANT_CONCURRENCY):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
            sock.sendall(_head(api, "/v1/diarize", 500_000, "multipart/form-data; boundary=xyz",
                               key=api.keys["b"]).encode())
            socks.append(sock)
        wait_until(lambda: rc.zcard(slots) >= TENANT_CONCURRENCY, 60, 0.2, message="slots taken")
        r = api.request("GET", "/v1/tasks", "b")
        assert r.status_code == 429 and r.json()["error"] == "Limited" and "in progress" in r.text, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert api.request("GET", "/v1/tasks", "a").status_code == 200  # other tenants unaffected
    finally:
        for sock in socks:
            sock.close()
    # Hanging up gives the slots back.
    wait_until(lambda: api.request("GET", "/v1/tasks", "b").status_code == 200, 60, 1.0, message="slots back")
    rc.close()


def test_wait_true_analytics_slots_are_bounded_per_tenant(api):
    rc = api.redis()
    slots = f"{api.settings.key_prefix}raysys:api-limit:slots:wait:{api.tenants['a']}"
    result: dict = {}

    def first():
        result["r"] = api.request("POST", f"/v1/calls/{api.calls['a']}/analytics?wait=true&timeout=600", "a")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_until(lambda: rc.zcard(slots) >= 1 or not thread.is_alive(), 120, 0.05, message="wait slot taken")
        assert thread.is_alive(), "the first analytics request ended before the test could overlap it"
        r = api.request("POST", f"/v1/calls/{api.calls['a']}/analytics?wait=true", "a")
        assert r.status_code == 429 and r.json()["error"] == "Limited" and "wait=true" in r.text, r.text
        assert int(r.headers["retry-after"]) >= 1
        # Enqueueing (wait=false) holds no slot and still works.
        assert api.request("POST", f"/v1/calls/{api.calls['a']}/analytics?wait=false", "a").status_code == 202
    finally:
        thread.join()
        rc.close()
    assert result["r"].status_code == 200, result["r"].text


# --- low items -----------------------------------------------------------------------------------------


def test_forbidden_messages_do_not_reveal_real_paths_or_roots(api):
    target = Path("/etc/hostname") if Path("/etc/hostname").exists() else Path("/etc/passwd")
    os.symlink(target, api.docs["a"] / "escape.txt")
    for path in ("escape.txt", f"../{api.tenants['b']}/secret.md", "../../../../etc/hostname"):
        r = api.request("POST", "/v1/tasks/ingest_document", "a",
                        json={"kwargs": {"document_id": "d2", "source_path": path}})
        assert r.status_code == 403, (path, r.text)
        detail = r.json()["detail"]
        assert api.settings.data_dir not in detail, detail
        assert path.startswith("..") or str(target) not in detail, detail  # where the link leads stays hidden
        assert not any(root in detail for root in api.settings.allowed_roots), detail


def test_readyz_without_a_key_is_a_plain_status(api):
    from fastapi.testclient import TestClient

    from raysys.serve.app import create_app
    from raysys.serve.service import Service

    r = api.http.get("/readyz")
    assert set(r.json()["checks"].values()) <= {"ok", "loading", "unavailable"}, r.text
    dead_port = free_port()
    service = Service(api.settings.replace(broker_url=f"redis://127.0.0.1:{dead_port}/0"))
    with TestClient(create_app(service)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["redis"] == "unavailable" and r.json()["checks"]["postgres"] == "ok"
    assert str(dead_port) not in r.text and "127.0.0.1" not in r.text and "Error" not in r.text, r.text


def test_job_owner_outlives_the_longest_countdown(api):
    month = 30 * 86_400
    r = api.request("POST", "/v1/tasks/raysys.ping", "a", json={"args": ["later"], "countdown": month})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    rc = api.redis()
    ttl = rc.ttl(f"{api.settings.key_prefix}raysys:job-tenant:{job_id}")
    rc.close()
    assert ttl >= month + api.settings.result_expires, ttl
    assert api.request("GET", f"/v1/jobs/{job_id}", "a").json()["state"] == "PENDING"
    eta = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    r = api.request("POST", "/v1/tasks/raysys.ping", "a", json={"args": ["much later"], "eta": eta})
    assert r.status_code == 422 and "eta" in r.json()["detail"], r.text
