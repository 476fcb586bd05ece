"""Pushing a document's chunks to the RAG service (``RAG_SERVICE_URL``) with httpx.

Endpoint shape (what a RAG service must accept; all JSON, ``X-Tenant-ID`` header on every call):

``POST {url}/v1/documents/{document_id}/chunks`` — one batch (at most ``batch_size`` chunks)::

    {"tenant_id": "...", "document_id": "...", "content_hash": "sha256:...",
     "batch": 0, "batches": 3,
     "chunks": [{"id": "<stable id>", "position": 0, "page": 1, "heading": "A > B",
                 "text": "...", "embedding": [384 floats]}]}

  The service upserts by chunk ``id``. The id is derived from tenant, document id, position and content
  hash, and each call carries an ``Idempotency-Key`` header, so a repeated batch (a retry after a
  timeout, a re-run job) changes nothing. 2xx = stored.

``POST {url}/v1/documents/{document_id}/commit`` — after the last batch::

    {"tenant_id": "...", "document_id": "...", "content_hash": "sha256:...", "chunk_count": 12,
     "chunk_ids": ["...", ...], "title": "...", "source_path": "...", "mime_type": "..."}

  The service makes this version current and drops the document's chunks whose id is not listed
  (those of an older version), so a changed document is replaced, not appended to.

Retries: connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff and
jitter (``Retry-After`` honoured, capped); another 4xx is a refusal and is not retried. When the
attempts run out, :class:`RagServiceError` with ``retryable = True`` lets the queue retry the job later;
ingestion records which version the service holds, so the retry pushes again without re-embedding.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx

from raysys.config import redact_text, redact_url
from raysys.errors import RaysysError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Defaults for pushes made by ingestion (module-level so an operator or a test can tune them).
DEFAULT_BATCH_SIZE = 64
DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF = 0.5  # seconds before the first retry; doubled each try, jittered, capped at backoff_max


class RagServiceError(RaysysError):
    """The RAG service refused a push (4xx: not retryable) or stayed unavailable (retryable)."""

    http_status = 502

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def chunk_id(tenant_id: str, document_id: str, position: int, content_hash: str) -> str:
    """A stable id for one chunk of one version of a document."""
    return hashlib.sha256(f"{tenant_id}\x00{document_id}\x00{position}\x00{content_hash}".encode()).hexdigest()[:32]


class RagClient:
    """Pushes chunks to one RAG service. Use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, *, batch_size: int | None = None, attempts: int | None = None,
                 backoff: float | None = None, backoff_max: float = 30.0, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.batch_size = max(1, batch_size or DEFAULT_BATCH_SIZE)
        self.attempts = max(1, attempts or DEFAULT_ATTEMPTS)
        self.backoff = DEFAULT_BACKOFF if backoff is None else backoff
        self.backoff_max = backoff_max
        self.client = httpx.Client(timeout=timeout, transport=transport)
        self.requests = 0  # HTTP requests made, retries included (for logs and tests)

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _url(self, document_id: str, action: str) -> str:
        return f"{self.base_url}/v1/documents/{urllib.parse.quote(document_id, safe='')}/{action}"

    def _post(self, url: str, body: dict[str, Any], tenant_id: str, key: str) -> httpx.Response:
        headers = {"X-Tenant-ID": tenant_id, "Idempotency-Key": key}
        for attempt in range(1, self.attempts + 1):
            self.requests += 1
            wait = self.backoff * (2 ** (attempt - 1))
            try:
                response = self.client.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:  # connect, read, write, timeout
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise RagServiceError(f"RAG service refused {redact_url(url)}: HTTP {response.status_code} "
                                          f"{response.text[:300]!r}", retryable=False, status=response.status_code)
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            if attempt == self.attempts:
                raise RagServiceError(f"RAG service unavailable at {redact_url(url)} after {attempt} attempts "
                                      f"({redact_text(problem, url)})",
                                      retryable=True)
            wait = min(self.backoff_max, wait) * (0.5 + random.random() / 2)
            log.warning("rag push %s: %s; retry %d/%d in %.2fs", redact_url(url), redact_text(problem, url), attempt,
                        self.attempts - 1, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def push_document(self, tenant_id: str, document_id: str, content_hash: str, chunks: Sequence[dict[str, Any]],
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Push every chunk (dicts with position, page, heading, text, embedding) then commit.

        Returns ``{"batches", "chunks", "requests"}``. Raises :class:`RagServiceError`.
        """
        ids = [chunk_id(tenant_id, document_id, int(c["position"]), content_hash) for c in chunks]
        batches = [range(i, min(i + self.batch_size, len(chunks))) for i in range(0, len(chunks), self.batch_size)]
        before = self.requests
        for b, span in enumerate(batches):
            body = {
                "tenant_id": tenant_id, "document_id": document_id, "content_hash": content_hash,
                "batch": b, "batches": len(batches),
                "chunks": [{"id": ids[i], "position": int(chunks[i]["position"]), "page": chunks[i].get("page"),
                            "heading": chunks[i].get("heading"), "text": chunks[i]["text"],
                            "embedding": [float(x) for x in chunks[i]["embedding"]]} for i in span],
            }
            self._post(self._url(document_id, "chunks"), body, tenant_id, f"{ids[span[0]]}:{len(span)}")
        commit = {"tenant_id": tenant_id, "document_id": document_id, "content_hash": content_hash,
                  "chunk_count": len(chunks), "chunk_ids": ids, **(meta or {})}
        key = hashlib.sha256(f"{tenant_id}\x00{document_id}\x00{content_hash}\x00commit".encode()).hexdigest()[:32]
        self._post(self._url(document_id, "commit"), commit, tenant_id, key)
        return {"batches": len(batches), "chunks": len(chunks), "requests": self.requests - before}
