-- Document ingestion (issue 5): what a document's chunks were built from, and what the RAG service has.
-- A document is "unchanged" only when its bytes, the embedding model and the chunker are all the same.
ALTER TABLE documents ADD COLUMN size_bytes      bigint;
ALTER TABLE documents ADD COLUMN embedding_model text;
ALTER TABLE documents ADD COLUMN pipeline        text;          -- parser/chunker version that built the chunks
ALTER TABLE documents ADD COLUMN rag_pushed_hash text;          -- content_hash last accepted by RAG_SERVICE_URL
ALTER TABLE documents ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now();
CREATE INDEX documents_tenant_updated ON documents (tenant_id, updated_at);
