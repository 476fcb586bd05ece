"""The document index in PostgreSQL: ``documents`` and ``document_chunks`` (pgvector, HNSW, cosine).

Every statement is tenant-scoped and parametrised. A document's chunks are replaced in one
transaction (delete + insert under a per-document advisory lock), so a reader sees the old chunks or
the new ones, never a mix, and two ingestions of one document cannot interleave. Vectors go through
``executemany`` with the text codec that :func:`raysys.storage.postgres.connect` registers for
``vector`` (asyncpg has no binary codec for it, and ``copy_records_to_table`` cannot send it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import numpy as np


class Chunk(Protocol):
    """What is stored of a chunk (:class:`raysys.ingest.chunking.Chunk` is one)."""

    position: int
    page: int | None
    heading: str | None
    text: str


@dataclass
class DocumentRecord:
    id: str
    tenant_id: str
    source_path: str
    content_hash: str
    mime_type: str
    title: str | None
    pages: int | None
    size_bytes: int | None
    embedding_model: str | None
    pipeline: str | None


@dataclass
class SearchHit:
    document_id: str
    position: int
    page: int | None
    heading: str | None
    text: str
    score: float  # cosine similarity in [-1, 1]
    title: str | None = None
    source_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _lock_key(tenant_id: str, document_id: str) -> str:
    return f"raysys-doc:{tenant_id}:{document_id}"


async def get_document(conn: asyncpg.Connection, tenant_id: str, document_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id, tenant_id, source_path, content_hash, mime_type, title, pages, chunk_count, size_bytes, "
        "embedding_model, pipeline, rag_pushed_hash, ingested_at, updated_at "
        "FROM documents WHERE tenant_id = $1 AND id = $2", tenant_id, document_id)
    return dict(row) if row else None


async def replace_document(conn: asyncpg.Connection, doc: DocumentRecord, chunks: Sequence[Chunk],
                           vectors: np.ndarray) -> None:
    """Insert or replace ``doc`` and all its chunks atomically (one transaction)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    rows = [(doc.tenant_id, doc.id, c.position, c.page, c.heading, c.text, vectors[i].tolist())
            for i, c in enumerate(chunks)]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key(doc.tenant_id, doc.id))
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", doc.tenant_id)
        await conn.execute(
            "INSERT INTO documents (id, tenant_id, source_path, content_hash, mime_type, title, pages, chunk_count, "
            "size_bytes, embedding_model, pipeline, rag_pushed_hash, ingested_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, now(), now()) "
            "ON CONFLICT (tenant_id, id) DO UPDATE SET source_path = EXCLUDED.source_path, "
            "content_hash = EXCLUDED.content_hash, mime_type = EXCLUDED.mime_type, title = EXCLUDED.title, "
            "pages = EXCLUDED.pages, chunk_count = EXCLUDED.chunk_count, size_bytes = EXCLUDED.size_bytes, "
            "embedding_model = EXCLUDED.embedding_model, pipeline = EXCLUDED.pipeline, rag_pushed_hash = NULL, "
            "updated_at = now()",
            doc.id, doc.tenant_id, doc.source_path, doc.content_hash, doc.mime_type, doc.title, doc.pages,
            len(chunks), doc.size_bytes, doc.embedding_model, doc.pipeline)
        await conn.execute("DELETE FROM document_chunks WHERE tenant_id = $1 AND document_id = $2",
                           doc.tenant_id, doc.id)
        if rows:
            await conn.executemany(
                "INSERT INTO document_chunks (tenant_id, document_id, position, page, heading, text, embedding) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)


async def touch_document(conn: asyncpg.Connection, tenant_id: str, document_id: str, source_path: str) -> None:
    """Record that an unchanged document was seen again (its path may have moved)."""
    await conn.execute("UPDATE documents SET source_path = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2",
                       tenant_id, document_id, source_path)


async def load_chunks(conn: asyncpg.Connection, tenant_id: str, document_id: str) -> list[dict[str, Any]]:
    """The document's chunks in order, each with its ``embedding`` as a list of floats."""
    rows = await conn.fetch(
        "SELECT position, page, heading, text, embedding FROM document_chunks "
        "WHERE tenant_id = $1 AND document_id = $2 ORDER BY position", tenant_id, document_id)
    return [dict(r) for r in rows]


async def mark_pushed(conn: asyncpg.Connection, tenant_id: str, document_id: str, content_hash: str) -> None:
    """Record that the RAG service holds this version (only if it is still the current one)."""
    await conn.execute("UPDATE documents SET rag_pushed_hash = $3 WHERE tenant_id = $1 AND id = $2 "
                       "AND content_hash = $3", tenant_id, document_id, content_hash)


async def delete_document(conn: asyncpg.Connection, tenant_id: str, document_id: str) -> bool:
    status = await conn.execute("DELETE FROM documents WHERE tenant_id = $1 AND id = $2", tenant_id, document_id)
    return status.split()[-1] != "0"


async def search(conn: asyncpg.Connection, tenant_id: str, vector: Sequence[float], top_k: int = 5,
                 *, ef_search: int = 100) -> list[SearchHit]:
    """The ``top_k`` chunks of this tenant nearest to ``vector`` by cosine distance (HNSW index).

    pgvector filters an HNSW scan after the fact; iterative scans (pgvector >= 0.8) keep reading the
    index until ``top_k`` rows of this tenant are found, so a small tenant among big ones still gets
    its results.
    """
    top_k = max(1, min(int(top_k), 1000))
    async with conn.transaction():
        await conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), top_k)}")
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        except asyncpg.PostgresError:  # pgvector < 0.8: no iterative scans
            pass
        rows = await conn.fetch(
            "SELECT c.document_id, c.position, c.page, c.heading, c.text, d.title, d.source_path, "
            "1 - (c.embedding <=> $2) AS score "
            "FROM (SELECT document_id, position, page, heading, text, embedding FROM document_chunks "
            "      WHERE tenant_id = $1 ORDER BY embedding <=> $2 LIMIT $3) c "
            "JOIN documents d ON d.tenant_id = $1 AND d.id = c.document_id "
            "ORDER BY score DESC", tenant_id, list(map(float, vector)), top_k)
    return [SearchHit(r["document_id"], r["position"], r["page"], r["heading"], r["text"], float(r["score"]),
                      r["title"], r["source_path"]) for r in rows]
