"""Ingestion tasks on the ``ingest`` queue (Celery names kept).

- ``workers.tasks.ingest_document(document_id, tenant_id, source_path)`` -> one document's summary.
- ``workers.tasks.ingest_batch(tenant_id, source_paths)`` -> per-document results and totals.

Source paths must lie inside ``RAYSYS_ALLOWED_ROOTS`` (symlinks resolved). Errors map to the
registry's rules: a bad file (Forbidden, NotFound, TooLarge, UnsupportedMedia, InvalidInput) fails
at once; a database or RAG-service outage is retried with backoff.
"""

from __future__ import annotations

import time
from typing import Any

from raysys.errors import InvalidInput
from raysys.ingest.batch import ingest_many
from raysys.ingest.pipeline import ingest_document as run
from raysys.runtime import init_ray
from raysys.tasks.registry import TaskContext, task


@task("workers.tasks.ingest_document", queue="ingest", aliases=("tasks.ingest_document",))
def ingest_document(ctx: TaskContext, document_id: str, tenant_id: str, source_path: str) -> dict[str, Any]:
    """Parse, chunk, embed and index one document; unchanged content is skipped.

    Returns ``{"document_id", "tenant_id", "source_path", "status": "ingested"|"unchanged", "chunks",
    "pages", "mime_type", "title", "bytes", "content_hash", "seconds", "rag"}``.
    """
    return run(ctx.settings, tenant_id, source_path, document_id, progress=ctx.progress)


# The batch only fans out and waits on its children (which hold the CPUs); holding a CPU itself would
# let a few batches on a small cluster take every CPU their children need (a deadlock).
@task("workers.tasks.ingest_batch", queue="ingest", aliases=("tasks.ingest_batch",), num_cpus=0)
def ingest_batch(ctx: TaskContext, tenant_id: str, source_paths: list[str] | str) -> dict[str, Any]:
    """Ingest many files (directories expanded) over the cluster; one bad file fails alone.

    Returns ``{"tenant_id", "total", "ingested", "unchanged", "failed", "chunks", "pages", "seconds",
    "documents": [per-document summary or {"source_path", "document_id", "status": "failed",
    "error": {"type", "message", "http_status", "retryable"}}]}``. The task itself succeeds even when
    some documents fail; it fails only for bad arguments.
    """
    if isinstance(source_paths, str):
        source_paths = [source_paths]
    if not isinstance(source_paths, (list, tuple)):
        raise InvalidInput("source_paths must be a list of paths")
    if not isinstance(tenant_id, str) or not tenant_id or len(tenant_id) > 200:
        raise InvalidInput("tenant_id must be a non-empty string of at most 200 characters")
    started = time.perf_counter()
    init_ray(ctx.settings)
    total = {"n": 0}
    documents: list[dict[str, Any]] = []

    def on_total(n: int) -> None:
        total["n"] = n

    for result in ingest_many(ctx.settings, tenant_id, list(source_paths), on_total=on_total):
        documents.append(result)
        ctx.progress(len(documents) / max(1, total["n"]), f"{len(documents)}/{total['n']} documents")
    counts = {s: sum(1 for d in documents if d["status"] == s) for s in ("ingested", "unchanged", "failed")}
    return {"tenant_id": tenant_id, "total": len(documents), **counts,
            "chunks": sum(d.get("chunks") or 0 for d in documents if d["status"] == "ingested"),
            "pages": sum(d.get("pages") or 0 for d in documents if d["status"] == "ingested"),
            "seconds": round(time.perf_counter() - started, 3), "documents": documents}
