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
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from raysys.actors.embedding import embed_texts, model_name
from raysys.config import Settings
from raysys.constants import EMBEDDING_DIM
from raysys.errors import InvalidInput, NotFound, TooLarge
from raysys.ingest import chunking
from raysys.ingest.detect import sniff
from raysys.ingest.parse import parse
from raysys.ingest.rag import RagClient
from raysys.models.redaction import redact
from raysys.paths import confine
from raysys.storage import documents
from raysys.storage.postgres import connect, database_url, tenant_pii

log = logging.getLogger(__name__)

PIPELINE_VERSION = "ingest-1"  # bump when parsing or chunking changes what chunks a file yields
EMBED_BATCH = 16      # texts per embedding call (small batches run faster on CPU: cache-sized)
EMBED_IN_FLIGHT = 4   # embedding calls in flight at once

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
    return model_name(settings)


def cluster_embedder(settings: Settings) -> Embedder:
    """Embed through the cluster's embedding actor pool."""
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


@dataclass
class _Prepared:
    """A document read, parsed and chunked, waiting for its vectors."""

    index: int
    summary: dict[str, Any]
    record: documents.DocumentRecord
    chunks: list[chunking.Chunk]
    timings: dict[str, float]
    seconds: float  # time spent on this document so far


def _check_ids(tenant_id: Any, document_id: Any) -> None:
    if not isinstance(tenant_id, str) or not tenant_id or len(tenant_id) > 200:
        raise InvalidInput("tenant_id must be a non-empty string of at most 200 characters")
    if document_id is not None and (not isinstance(document_id, str) or not document_id or len(document_id) > 200):
        raise InvalidInput("document_id must be a non-empty string of at most 200 characters")


def ingest_document(settings: Settings, tenant_id: str, source_path: str | os.PathLike[str],
                    document_id: str | None = None, *, embed: Embedder | None = None,
                    progress: Callable[[float, str], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Ingest one file for ``tenant_id``; return a JSON-serialisable summary.

    Summary keys: ``document_id``, ``tenant_id``, ``source_path``, ``status`` (``ingested`` |
    ``unchanged``), ``chunks``, ``pages``, ``mime_type``, ``title``, ``bytes``, ``content_hash``,
    ``seconds`` (and per-stage ``timings`` when ingested), ``rag`` (push summary or None).

    Raises:
        Forbidden: the path escapes ``settings.allowed_roots``.
        NotFound: no such file.
        TooLarge: over ``max_document_bytes`` or ``max_document_pages``.
        UnsupportedMedia: not a PDF, DOCX, HTML, Markdown or text file (judged by content).
        InvalidInput: corrupt, encrypted, empty, or bad ids.
        ConfigError: no PostgreSQL is configured.
        RagServiceError: the RAG service refused or stayed down (retryable then).
    """
    _check_ids(tenant_id, document_id)
    result = ingest_documents(settings, tenant_id, [(source_path, document_id)], embed=embed, progress=progress,
                              force=force)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def ingest_documents(settings: Settings, tenant_id: str,
                     items: Sequence[tuple[str | os.PathLike[str], str | None]], *, embed: Embedder | None = None,
                     progress: Callable[[float, str], None] | None = None,
                     force: bool = False) -> list[dict[str, Any] | BaseException]:
    """Ingest several ``(source_path, document_id or None)`` files over one database connection.

    The chunks of all changed files are embedded together (full batches even for small files), and
    each file is stored in its own transaction. Returns, in order, each file's summary (as
    :func:`ingest_document`) or the exception that file raised; one bad file does not stop the others.
    """
    _check_ids(tenant_id, None)
    database_url(settings)  # ConfigError now, before any work, when no database is configured
    return run_async(_ingest_group(settings, tenant_id, list(items), embed or cluster_embedder(settings),
                                   progress or (lambda fraction, message: None), force))


async def _ingest_group(settings: Settings, tenant_id: str, items: list[tuple[Any, str | None]], embed: Embedder,
                        report: Callable[[float, str], None], force: bool) -> list[dict[str, Any] | BaseException]:
    results: list[dict[str, Any] | BaseException | None] = [None] * len(items)
    prepared: list[_Prepared] = []
    conn = await connect(database_url(settings))
    try:
        for i, (source_path, document_id) in enumerate(items):
            try:
                outcome = await _prepare(settings, conn, tenant_id, source_path, document_id, force, i)
            except Exception as exc:  # noqa: BLE001 - reported for this file only
                results[i] = exc
                continue
            if isinstance(outcome, dict):
                results[i] = outcome
            else:
                prepared.append(outcome)
        report(0.3, f"{sum(len(p.chunks) for p in prepared)} chunks to embed")

        mark = time.perf_counter()
        texts = [c.embed_text for p in prepared for c in p.chunks]
        try:
            matrix = await asyncio.to_thread(embed_all, embed, texts,
                                             lambda f: report(0.3 + 0.6 * f, "embedding"))
        except Exception as exc:  # noqa: BLE001 - the embedding service failed: every pending file fails
            for p in prepared:
                results[p.index] = exc
            prepared = []
        embed_seconds = time.perf_counter() - mark

        offset = 0
        for p in prepared:
            share = embed_seconds * len(p.chunks) / max(1, len(texts))
            vectors = matrix[offset:offset + len(p.chunks)]
            offset += len(p.chunks)
            p.timings["embed"] = share
            try:
                results[p.index] = await _store(settings, conn, p, vectors)
            except Exception as exc:  # noqa: BLE001 - one document's failure is that document's result
                results[p.index] = exc
    finally:
        await conn.close()
    report(1.0, "indexed")
    return results  # type: ignore[return-value]


async def _prepare(settings: Settings, conn: Any, tenant_id: str, source_path: Any, document_id: str | None,
                   force: bool, position: int) -> dict[str, Any] | _Prepared:
    """Read and check one file; an unchanged one is finished here (a summary), a changed one parsed."""
    started = time.perf_counter()
    _check_ids(tenant_id, document_id)
    path, data = read_document(settings, source_path)
    document_id = document_id or document_id_for(path)
    content_hash = "sha256:" + hashlib.sha256(data).hexdigest()
    model = model_path(settings)
    timings = {"read": time.perf_counter() - started}
    summary: dict[str, Any] = {"document_id": document_id, "tenant_id": tenant_id, "source_path": str(path),
                               "bytes": len(data), "content_hash": content_hash, "rag": None}
    current = await documents.get_document(conn, tenant_id, document_id)
    redact = await _redacts_documents(settings, conn, tenant_id)
    pipeline = PIPELINE_VERSION + ("+pii" if redact else "")  # turning redaction on re-chunks the document
    if (not force and current and current["content_hash"] == content_hash
            and current["embedding_model"] == model and current["pipeline"] == pipeline):
        summary.update(status="unchanged", chunks=current["chunk_count"], pages=current["pages"],
                       mime_type=current["mime_type"], title=current["title"])
        await documents.touch_document(conn, tenant_id, document_id, str(path))
        if settings.rag_service_url and current["rag_pushed_hash"] != current["content_hash"]:
            rows = await documents.load_chunks(conn, tenant_id, document_id)
            summary["rag"] = await asyncio.to_thread(_push, settings, record_meta(current), tenant_id, document_id,
                                                     content_hash, rows)
            await documents.mark_pushed(conn, tenant_id, document_id, content_hash)
        summary["seconds"] = round(time.perf_counter() - started, 4)
        log.info("ingest %s/%s unchanged (%s) in %.2fs", tenant_id, document_id, path.name, summary["seconds"])
        return summary

    mark = time.perf_counter()
    kind = sniff(data, path.name)
    parsed = parse(kind, data, max_pages=settings.max_document_pages, filename=path.name)
    timings["parse"] = time.perf_counter() - mark
    mark = time.perf_counter()
    chunks = chunking.chunk_blocks(parsed.blocks, chunking.token_counter(model))
    if redact:
        chunks = _redacted(chunks, settings.pii_phone_regions)
    timings["chunk"] = time.perf_counter() - mark
    record = documents.DocumentRecord(document_id, tenant_id, str(path), content_hash, parsed.mime_type,
                                      (parsed.title or "")[:500] or None, parsed.pages, len(data), model, pipeline)
    summary.update(chunks=len(chunks), pages=parsed.pages, mime_type=parsed.mime_type, title=record.title)
    return _Prepared(position, summary, record, chunks, timings, time.perf_counter() - started)


async def _redacts_documents(settings: Settings, conn: Any, tenant_id: str) -> bool:
    """Whether the tenant's chunks are PII-redacted: its own setting, else ``PII_REDACT_DOCUMENTS``."""
    own = (await tenant_pii(conn, tenant_id))["pii_redact_documents"]
    return settings.pii_redact_documents if own is None else bool(own)


def _redacted(chunks: list[chunking.Chunk], regions: Sequence[str]) -> list[chunking.Chunk]:
    """The chunks with PII in their text and headings replaced by tags (issue 17)."""
    return [dataclasses.replace(c, text=redact(c.text, regions=regions).text,
                                heading=redact(c.heading, regions=regions).text if c.heading else c.heading)
            for c in chunks]


async def _store(settings: Settings, conn: Any, p: _Prepared, vectors: np.ndarray) -> dict[str, Any]:
    mark = time.perf_counter()
    await documents.replace_document(conn, p.record, p.chunks, vectors)
    p.timings["index"] = time.perf_counter() - mark
    summary = p.summary
    summary["status"] = "ingested"
    if settings.rag_service_url:
        mark = time.perf_counter()
        rows = [{"position": c.position, "page": c.page, "heading": c.heading, "text": c.text,
                 "embedding": vectors[i]} for i, c in enumerate(p.chunks)]
        r = p.record
        summary["rag"] = await asyncio.to_thread(_push, settings, record_meta(r), r.tenant_id, r.id,
                                                 r.content_hash, rows)
        await documents.mark_pushed(conn, r.tenant_id, r.id, r.content_hash)
        p.timings["rag"] = time.perf_counter() - mark
    summary["timings"] = {k: round(v, 4) for k, v in p.timings.items()}
    summary["seconds"] = round(p.seconds + sum(v for k, v in p.timings.items() if k not in ("read", "parse", "chunk")), 4)
    log.info("ingest %s/%s %s: %s pages, %d chunks in %.2fs", p.record.tenant_id, p.record.id,
             Path(p.record.source_path).name, p.record.pages or "-", len(p.chunks), summary["seconds"])
    return summary


def embed_all(embed: Embedder, texts: list[str], progress: Callable[[float], None] | None = None,
              batch: int = EMBED_BATCH, in_flight: int = EMBED_IN_FLIGHT) -> np.ndarray:
    """Embed ``texts`` in batches of ``batch``, up to ``in_flight`` batches at once (so a pool of embedding
    actors works in parallel; a single actor simply queues them)."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    spans = [(i, texts[i:i + batch]) for i in range(0, len(texts), batch)]
    if len(spans) == 1:
        return np.asarray(embed(spans[0][1]), dtype=np.float32)
    done = 0
    parts: dict[int, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=min(in_flight, len(spans)), thread_name_prefix="raysys-embed") as pool:
        futures = {pool.submit(embed, chunk): start for start, chunk in spans}
        for future in as_completed(futures):
            parts[futures[future]] = np.asarray(future.result(), dtype=np.float32)
            done += 1
            if progress:
                progress(done / len(spans))
    return np.concatenate([parts[start] for start, _ in spans])


def record_meta(record: documents.DocumentRecord | dict[str, Any]) -> dict[str, Any]:
    get = record.get if isinstance(record, dict) else lambda k: getattr(record, k)
    return {"title": get("title"), "source_path": get("source_path"), "mime_type": get("mime_type")}


def _push(settings: Settings, meta: dict[str, Any], tenant_id: str, document_id: str, content_hash: str,
          rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Push one document version to the RAG service (blocking HTTP; run it in a thread from async code)."""
    with RagClient(settings.rag_service_url) as client:
        return client.push_document(tenant_id, document_id, content_hash, rows, meta)


def search(settings: Settings, tenant_id: str, query: str, top_k: int = 5, *,
           embed: Embedder | None = None) -> list[documents.SearchHit]:
    """The ``top_k`` chunks of ``tenant_id`` most similar to ``query``."""
    if not query.strip():
        raise InvalidInput("the search query is empty")
    url = database_url(settings)
    embed = embed or cluster_embedder(settings)
    vector = np.asarray(embed([query]), dtype=np.float32)[0]

    async def run() -> list[documents.SearchHit]:
        conn = await connect(url)
        try:
            return await documents.search(conn, tenant_id, vector.tolist(), top_k)
        finally:
            await conn.close()

    return run_async(run())
