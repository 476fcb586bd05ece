"""Ingesting one document: confine -> read -> hash -> sniff -> parse -> chunk -> embed -> index -> push.

:func:`ingest_document` is what the ``workers.tasks.ingest_document`` task and ``raysys ingest`` run.
It is idempotent by content: the SHA-256 of the file's bytes, with the embedding model and this
pipeline's version beside it, decides whether anything is done at all (the file is then not even
parsed). A changed document has its chunks replaced in one transaction.

Embeddings come from the cluster's embedding actor (:func:`raysys.actors.embedding.embed_texts`), in
batches of ``EMBED_BATCH`` texts, so Ray must be initialised (inside a Ray task it is).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from raysys.config import Settings
from raysys.constants import EMBEDDING_DIM
from raysys.errors import InvalidInput, NotFound, TooLarge
from raysys.ingest import chunking, index
from raysys.ingest.detect import sniff
from raysys.ingest.parse import parse
from raysys.paths import confine

log = logging.getLogger(__name__)

PIPELINE_VERSION = "ingest-1"  # bump when parsing or chunking changes what chunks a file yields
EMBED_BATCH = 64

T = TypeVar("T")
Embedder = Callable[[list[str]], np.ndarray]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even where this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="raysys-ingest-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def document_id_for(path: str | os.PathLike[str]) -> str:
    """A stable document id for a file that arrives without one (batch and CLI ingestion)."""
    return "doc_" + hashlib.sha256(os.fspath(path).encode()).hexdigest()[:24]


def model_path(settings: Settings) -> str:
    from raysys.actors.embedding import model_name  # noqa: PLC0415

    return model_name(settings)


def cluster_embedder(settings: Settings) -> Embedder:
    """Embed through the cluster's embedding actor pool."""
    from raysys.actors.embedding import embed_texts  # noqa: PLC0415

    return lambda texts: embed_texts(settings, texts)


def read_document(settings: Settings, source_path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    """Confine, check and read a source file. Raises Forbidden, NotFound, InvalidInput or TooLarge."""
    path = confine(source_path, settings.allowed_roots)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"document {os.fspath(source_path)!r} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"document {os.fspath(source_path)!r} cannot be read: {exc.strerror}") from None
    if not path.is_file():
        raise InvalidInput(f"document {os.fspath(source_path)!r} is not a regular file")
    limit = settings.max_document_bytes
    if st.st_size > limit:
        raise TooLarge(f"document {path.name!r} is {st.st_size:,} bytes, more than the limit of {limit:,} "
                       "(MAX_DOCUMENT_BYTES)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"document {os.fspath(source_path)!r} cannot be read: {exc.strerror}") from None
    if len(data) > limit:  # it grew between stat and read
        raise TooLarge(f"document {path.name!r} is more than the limit of {limit:,} bytes (MAX_DOCUMENT_BYTES)")
    return path, data


def ingest_document(settings: Settings, tenant_id: str, source_path: str | os.PathLike[str],
                    document_id: str | None = None, *, embed: Embedder | None = None,
                    progress: Callable[[float, str], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Ingest one file for ``tenant_id``; return a JSON-serialisable summary.

    Summary keys: ``document_id``, ``tenant_id``, ``source_path``, ``status`` (``ingested`` |
    ``unchanged``), ``chunks``, ``pages``, ``mime_type``, ``title``, ``bytes``, ``content_hash``,
    ``seconds`` (and per-stage ``timings``), ``rag`` (push summary or None).

    Raises:
        Forbidden: the path escapes ``settings.allowed_roots``.
        NotFound: no such file.
        TooLarge: over ``max_document_bytes`` or ``max_document_pages``.
        UnsupportedMedia: not a PDF, DOCX, HTML, Markdown or text file (judged by content).
        InvalidInput: corrupt, encrypted, empty, or bad ids.
        RagServiceError: the RAG service refused or stayed down (retryable then).
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    report = progress or (lambda fraction, message: None)
    if not tenant_id or not isinstance(tenant_id, str) or len(tenant_id) > 200:
        raise InvalidInput("tenant_id must be a non-empty string of at most 200 characters")
    if not settings.postgres_url:
        raise InvalidInput("POSTGRES_URL is not set and no embedded stack is running (run `raysys up`)")
    path, data = read_document(settings, source_path)
    document_id = document_id or document_id_for(path)
    if not isinstance(document_id, str) or not document_id or len(document_id) > 200:
        raise InvalidInput("document_id must be a non-empty string of at most 200 characters")
    content_hash = "sha256:" + hashlib.sha256(data).hexdigest()
    model = model_path(settings)
    timings["read"] = time.perf_counter() - started

    async def existing() -> dict[str, Any] | None:
        from raysys.storage.postgres import connect  # noqa: PLC0415

        conn = await connect(settings.postgres_url)
        try:
            return await index.get_document(conn, tenant_id, document_id)
        finally:
            await conn.close()

    current = run_async(existing())
    summary: dict[str, Any] = {"document_id": document_id, "tenant_id": tenant_id, "source_path": str(path),
                               "bytes": len(data), "content_hash": content_hash, "rag": None}
    if (not force and current and current["content_hash"] == content_hash
            and current["embedding_model"] == model and current["pipeline"] == PIPELINE_VERSION):
        summary.update(status="unchanged", chunks=current["chunk_count"], pages=current["pages"],
                       mime_type=current["mime_type"], title=current["title"])
        run_async(_touch_and_push(settings, tenant_id, document_id, str(path), current, summary))
        summary["seconds"] = round(time.perf_counter() - started, 4)
        log.info("ingest %s/%s unchanged (%s) in %.2fs", tenant_id, document_id, path.name, summary["seconds"])
        return summary

    mark = time.perf_counter()
    kind = sniff(data, path.name)
    parsed = parse(kind, data, max_pages=settings.max_document_pages, filename=path.name)
    del data
    timings["parse"] = time.perf_counter() - mark
    report(0.2, f"parsed {kind}: {parsed.pages or '-'} pages")

    mark = time.perf_counter()
    chunks = chunking.chunk_blocks(parsed.blocks, chunking.token_counter(model))
    timings["chunk"] = time.perf_counter() - mark
    report(0.3, f"{len(chunks)} chunks")

    mark = time.perf_counter()
    embed = embed or cluster_embedder(settings)
    texts = [c.embed_text for c in chunks]
    vectors: list[np.ndarray] = []
    for i in range(0, len(texts), EMBED_BATCH):
        vectors.append(np.asarray(embed(texts[i:i + EMBED_BATCH]), dtype=np.float32))
        report(0.3 + 0.6 * min(1.0, (i + EMBED_BATCH) / len(texts)), "embedding")
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    timings["embed"] = time.perf_counter() - mark

    mark = time.perf_counter()
    record = index.DocumentRecord(document_id, tenant_id, str(path), content_hash, parsed.mime_type,
                                  (parsed.title or "")[:500] or None, parsed.pages, summary["bytes"], model,
                                  PIPELINE_VERSION)

    async def store() -> None:
        from raysys.storage.postgres import connect  # noqa: PLC0415

        conn = await connect(settings.postgres_url)
        try:
            await index.replace_document(conn, record, chunks, matrix)
        finally:
            await conn.close()

    run_async(store())
    timings["index"] = time.perf_counter() - mark
    summary.update(status="ingested", chunks=len(chunks), pages=parsed.pages, mime_type=parsed.mime_type,
                   title=record.title)
    if settings.rag_service_url:
        mark = time.perf_counter()
        rows = [{"position": c.position, "page": c.page, "heading": c.heading, "text": c.text,
                 "embedding": matrix[i]} for i, c in enumerate(chunks)]
        summary["rag"] = _push(settings, record_meta(record), tenant_id, document_id, content_hash, rows)
        timings["rag"] = time.perf_counter() - mark
    report(1.0, "indexed")
    summary["timings"] = {k: round(v, 4) for k, v in timings.items()}
    summary["seconds"] = round(time.perf_counter() - started, 4)
    log.info("ingest %s/%s %s: %s pages, %d chunks in %.2fs", tenant_id, document_id, path.name,
             parsed.pages or "-", len(chunks), summary["seconds"])
    return summary


def record_meta(record: index.DocumentRecord | dict[str, Any]) -> dict[str, Any]:
    get = record.get if isinstance(record, dict) else lambda k: getattr(record, k)
    return {"title": get("title"), "source_path": get("source_path"), "mime_type": get("mime_type")}


async def _touch_and_push(settings: Settings, tenant_id: str, document_id: str, source_path: str,
                          current: dict[str, Any], summary: dict[str, Any]) -> None:
    """An unchanged document: note the sighting, and push it if the RAG service lacks this version."""
    from raysys.storage.postgres import connect  # noqa: PLC0415

    conn = await connect(settings.postgres_url)
    try:
        await index.touch_document(conn, tenant_id, document_id, source_path)
        if settings.rag_service_url and current["rag_pushed_hash"] != current["content_hash"]:
            rows = await index.load_chunks(conn, tenant_id, document_id)
            summary["rag"] = await asyncio.to_thread(_push, settings, record_meta(current), tenant_id, document_id,
                                                     current["content_hash"], rows)
    finally:
        await conn.close()


def _push(settings: Settings, meta: dict[str, Any], tenant_id: str, document_id: str, content_hash: str,
          rows: list[dict[str, Any]]) -> dict[str, Any]:
    from raysys.ingest.rag import RagClient  # noqa: PLC0415

    with RagClient(settings.rag_service_url) as client:
        result = client.push_document(tenant_id, document_id, content_hash, rows, meta)

    async def marked() -> None:
        from raysys.storage.postgres import connect  # noqa: PLC0415

        conn = await connect(settings.postgres_url)
        try:
            await index.mark_pushed(conn, tenant_id, document_id, content_hash)
        finally:
            await conn.close()

    run_async(marked())
    return result


def search(settings: Settings, tenant_id: str, query: str, top_k: int = 5, *,
           embed: Embedder | None = None) -> list[index.SearchHit]:
    """The ``top_k`` chunks of ``tenant_id`` most similar to ``query``."""
    if not query.strip():
        raise InvalidInput("the search query is empty")
    if not settings.postgres_url:
        raise InvalidInput("POSTGRES_URL is not set and no embedded stack is running (run `raysys up`)")
    embed = embed or cluster_embedder(settings)
    vector = np.asarray(embed([query]), dtype=np.float32)[0]

    async def run() -> list[index.SearchHit]:
        from raysys.storage.postgres import connect  # noqa: PLC0415

        conn = await connect(settings.postgres_url)
        try:
            return await index.search(conn, tenant_id, vector.tolist(), top_k)
        finally:
            await conn.close()

    return run_async(run())
