"""Ingestion through the real queue: a QueueBridge on the ``ingest`` Redis list runs
``workers.tasks.ingest_document`` / ``ingest_batch`` sent by a real Celery client and by raysys' own
producer; good files land in PostgreSQL, bad files get FAILURE results with clear errors (and a
dead-letter entry), and the bridge goes on serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis
from ingest_fixtures import PNG_BYTES, encrypted_pdf, make_pdf, write_corpus

from raysys.storage.postgres import connect


@pytest.fixture
def ingest_bridge(ray_cluster, settings):
    from raysys.queue.bridge import start_bridges, stop_bridges

    settings = settings.replace(max_document_bytes=100_000)
    handles = start_bridges(settings, queues=["ingest"], concurrency=2)
    yield settings
    stop_bridges(handles, timeout=10)


def chunk_count(url: str, tenant_id: str) -> dict[str, int]:
    async def run():
        conn = await connect(url)
        try:
            rows = await conn.fetch("SELECT document_id, count(*) AS n FROM document_chunks WHERE tenant_id = $1 "
                                    "GROUP BY document_id", tenant_id)
            return {r["document_id"]: r["n"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(run())


def test_ingest_through_queue_and_bridge(ingest_bridge, tmp_path, tenant_id):
    from celery import Celery

    from raysys.queue.client import Client

    settings = ingest_bridge
    root = Path(settings.allowed_roots[-1])
    corpus = write_corpus(root / "corpus")
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (root / "link.txt").symlink_to(outside)
    (root / "scan.pdf").write_bytes(PNG_BYTES)
    encrypted_pdf(make_pdf(root / "plain.pdf"), root / "locked.pdf")
    (root / "huge.txt").write_text("word " * (settings.max_document_bytes // 5 + 10))

    # a real Celery producer, as the platform's services send jobs today
    app = Celery("producer", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.task_routes = {"workers.tasks.*": {"queue": "ingest"}}
    try:
        ok = app.send_task("workers.tasks.ingest_document", args=("doc-pdf", tenant_id, str(corpus["handbook.pdf"])))
        summary = ok.get(timeout=120)
        assert ok.state == "SUCCESS"
        assert summary["document_id"] == "doc-pdf" and summary["status"] == "ingested" and summary["pages"] == 3
        bad = app.send_task("workers.tasks.ingest_document", args=("doc-escape", tenant_id, str(root / "link.txt")))
        with pytest.raises(Exception) as err:
            bad.get(timeout=60)
        assert bad.state == "FAILURE"
        assert type(err.value).__name__ == "Forbidden" and "outside the allowed roots" in str(err.value)
    finally:
        app.close()

    # raysys' producer: the bad files each fail alone, with a clear error, and are not retried
    client = Client(settings)
    cases = {
        "dotdot": (str(root / ".." / ".." / ".." / "outside.txt"), "Forbidden", "outside the allowed roots"),
        "png": (str(root / "scan.pdf"), "UnsupportedMedia", "PNG image"),
        "encrypted": (str(root / "locked.pdf"), "InvalidInput", "encrypted"),
        "huge": (str(root / "huge.txt"), "TooLarge", "MAX_DOCUMENT_BYTES"),
        "missing": (str(root / "gone.docx"), "NotFound", "does not exist"),
    }
    results = {label: client.send_task("workers.tasks.ingest_document", args=(f"doc-{label}", tenant_id, path))
               for label, (path, _, _) in cases.items()}
    good = client.send_task("ingest_document", args=("doc-md", tenant_id, str(corpus["banking.md"])))
    for label, (_, exc_type, words) in cases.items():
        result = results[label]
        with pytest.raises(Exception) as err:
            result.get(timeout=60)
        assert result.state == "FAILURE", label
        assert type(err.value).__name__ == exc_type and words in str(err.value), (label, err.value)
    assert good.get(timeout=120)["status"] == "ingested"

    r = redis.Redis.from_url(settings.redis_url)
    try:
        dead = [json.loads(x) for x in r.lrange("ingest.dead", 0, -1)]
    finally:
        r.close()
    assert {d.get("id") for d in dead} >= {results[label].id for label in cases} | {bad.id}
    assert all(d.get("retries", 0) == 0 for d in dead)  # a bad file is never retried

    # the batch task: one result per document, the bad ones failed alone
    batch = client.send_task("workers.tasks.ingest_batch",
                             args=(tenant_id, [str(corpus["handbook.pdf"].parent), str(root / "scan.pdf"),
                                               str(root / "link.txt")]))
    out = batch.get(timeout=180)
    assert batch.state == "SUCCESS"
    assert out["total"] == 7 and out["failed"] == 2 and out["ingested"] + out["unchanged"] == 5, out
    failed = {Path(d["source_path"]).name: d["error"]["type"] for d in out["documents"] if d["status"] == "failed"}
    assert failed == {"scan.pdf": "UnsupportedMedia", "link.txt": "Forbidden"}

    counts = chunk_count(settings.postgres_url, tenant_id)
    assert counts["doc-pdf"] == 3 and counts["doc-md"] >= 2
    assert not any(k.startswith("doc-") and k not in ("doc-pdf", "doc-md") for k in counts)
