"""Pushing chunks to the RAG service, against a real HTTP server on loopback that the test starts.

The server implements the endpoint shape documented in :mod:`raysys.ingest.rag` (upsert chunks by id,
commit drops the document's other chunks) and can be told to answer 503s or 400s.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from raysys.ingest import rag
from raysys.ingest.pipeline import ingest_document
from raysys.ingest.rag import RagClient, RagServiceError, chunk_id


class FakeRag:
    """State of the loopback RAG service: chunks by (tenant, document) and a log of requests."""

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, str], dict[str, dict]] = {}
        self.current: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str, dict, dict]] = []  # (method, path, headers, body)
        self.fail_next: list[int] = []  # statuses to answer, in order, before working normally
        self.lock = threading.Lock()


def _handler(state: FakeRag):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(("POST", self.path, dict(self.headers), body))
                if state.fail_next:
                    status = state.fail_next.pop(0)
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "try later"}' if status >= 500 else b'{"error": "bad"}')
                    return
                parts = [unquote(p) for p in self.path.strip("/").split("/")]  # v1 documents <id> chunks|commit
                key = (self.headers["X-Tenant-ID"], parts[2])
                assert body["tenant_id"] == key[0] and body["document_id"] == parts[2]
                store = state.chunks.setdefault(key, {})
                if parts[3] == "chunks":
                    for chunk in body["chunks"]:
                        store[chunk["id"]] = chunk
                elif parts[3] == "commit":
                    keep = set(body["chunk_ids"])
                    for cid in list(store):
                        if cid not in keep:
                            del store[cid]
                    state.current[key] = body["content_hash"]
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

    return Handler


@pytest.fixture
def rag_server():
    state = FakeRag()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(rag, "DEFAULT_BACKOFF", 0.01)
    monkeypatch.setattr(rag, "DEFAULT_ATTEMPTS", 3)


def _doc(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "guide.md"
    path.write_text(text)
    return path


GUIDE = "# Cards\n\nLost cards are blocked in the app.\n\n# Loans\n\nPersonal loans go up to 25,000 euros.\n"


def test_ingest_pushes_chunks_retrying_after_a_503(settings, ray_cluster, rag_server, tenant_id, fast_backoff):
    settings = settings.replace(rag_service_url=rag_server.url + "/")
    path = _doc(Path(settings.allowed_roots[-1]), GUIDE)
    rag_server.fail_next = [503]
    summary = ingest_document(settings, tenant_id, str(path), "guide")
    assert summary["status"] == "ingested" and summary["chunks"] == 2
    assert summary["rag"] == {"batches": 1, "chunks": 2, "requests": 3}  # 503, the batch again, commit
    posts = [(p, b) for _, p, _, b in rag_server.requests]
    assert [p for p, _ in posts] == ["/v1/documents/guide/chunks"] * 2 + ["/v1/documents/guide/commit"]
    assert posts[0][1] == posts[1][1]  # the retry sends the same batch
    assert rag_server.requests[0][2]["Idempotency-Key"] == rag_server.requests[1][2]["Idempotency-Key"]
    stored = rag_server.chunks[(tenant_id, "guide")]
    assert set(stored) == {chunk_id(tenant_id, "guide", i, summary["content_hash"]) for i in range(2)}
    assert all(len(c["embedding"]) == 384 for c in stored.values())
    assert {c["heading"] for c in stored.values()} == {"Cards", "Loans"}
    assert rag_server.current[(tenant_id, "guide")] == summary["content_hash"]

    # unchanged and already pushed: no HTTP at all
    n = len(rag_server.requests)
    assert ingest_document(settings, tenant_id, str(path), "guide")["status"] == "unchanged"
    assert len(rag_server.requests) == n

    # changed: the new version replaces the old chunks on the service too
    path.write_text("# Cards\n\nLost cards are blocked in the app or by phone.\n")
    changed = ingest_document(settings, tenant_id, str(path), "guide")
    stored = rag_server.chunks[(tenant_id, "guide")]
    assert list(stored) == [chunk_id(tenant_id, "guide", 0, changed["content_hash"])]
    assert "by phone" in next(iter(stored.values()))["text"]


def test_a_push_that_fails_is_retried_later_without_re_embedding(settings, ray_cluster, rag_server, tenant_id,
                                                                 fast_backoff):
    settings = settings.replace(rag_service_url=rag_server.url)
    path = _doc(Path(settings.allowed_roots[-1]), GUIDE)
    rag_server.fail_next = [503, 502, 503]  # all three attempts fail
    with pytest.raises(RagServiceError, match="after 3 attempts") as info:
        ingest_document(settings, tenant_id, str(path), "guide")
    assert info.value.retryable
    # the index has the document; the job's retry finds it unchanged and only pushes
    again = ingest_document(settings, tenant_id, str(path), "guide")
    assert again["status"] == "unchanged" and again["rag"]["chunks"] == 2
    assert len(rag_server.chunks[(tenant_id, "guide")]) == 2
    n = len(rag_server.requests)
    assert ingest_document(settings, tenant_id, str(path), "guide")["rag"] is None
    assert len(rag_server.requests) == n


def test_client_batches_is_idempotent_and_does_not_retry_a_refusal(rag_server):
    chunks = [{"position": i, "page": 1, "heading": None, "text": f"chunk {i}", "embedding": [0.1] * 4}
              for i in range(5)]
    with RagClient(rag_server.url, batch_size=2, backoff=0.01) as client:
        result = client.push_document("t1", "doc/with slash", "sha256:abc", chunks)
        assert result == {"batches": 3, "chunks": 5, "requests": 4}
        assert [r[1] for r in rag_server.requests] == ["/v1/documents/doc%2Fwith%20slash/chunks"] * 3 + \
            ["/v1/documents/doc%2Fwith%20slash/commit"]
        first = dict(rag_server.chunks[("t1", "doc/with slash")])
        client.push_document("t1", "doc/with slash", "sha256:abc", chunks)  # again: same ids, same state
        assert rag_server.chunks[("t1", "doc/with slash")] == first and len(first) == 5

        rag_server.fail_next = [400]
        before = len(rag_server.requests)
        with pytest.raises(RagServiceError, match="HTTP 400") as info:
            client.push_document("t1", "other", "sha256:def", chunks)
        assert not info.value.retryable and info.value.status == 400
        assert len(rag_server.requests) == before + 1


def test_unreachable_service_is_a_retryable_error():
    from raysys.stack import free_port

    with RagClient(f"http://127.0.0.1:{free_port()}", attempts=2, backoff=0.01, timeout=2) as client:
        with pytest.raises(RagServiceError, match="ConnectError") as info:
            client.push_document("t", "d", "sha256:x", [{"position": 0, "text": "x", "embedding": [0.0]}])
    assert info.value.retryable
