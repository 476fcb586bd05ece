"""Document ingestion into the RAG index: parse -> chunk -> embed -> index (PostgreSQL/pgvector) -> push.

The index itself (documents and chunks in PostgreSQL, vector search) is :mod:`raysys.storage.documents`.

- :mod:`raysys.ingest.detect`   what a file is, by its bytes
- :mod:`raysys.ingest.parse`    PDF, DOCX, HTML, Markdown, text -> headed paragraphs
- :mod:`raysys.ingest.chunking` paragraphs -> chunks within the embedding model's token limit
- :mod:`raysys.ingest.rag`      pushing chunks to the RAG service (``RAG_SERVICE_URL``)
- :mod:`raysys.ingest.pipeline` one document end to end (:func:`ingest_document`, :func:`search`)
- :mod:`raysys.ingest.batch`    many documents over the Ray cluster (:func:`ingest_many`)

Layer 3, beside :mod:`raysys.analytics` (neither imports the other): may import actors, models,
storage and the foundation; imported by tasks and above.
"""
