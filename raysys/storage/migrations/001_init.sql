-- raysys schema, version 1. Every table that holds tenant data carries tenant_id; every query filters on it.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    report_recipients text[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_hash    text NOT NULL UNIQUE,        -- sha256 of the secret; the secret itself is never stored
    prefix      text NOT NULL,               -- first characters, to recognise a key in listings
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE calls (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    customer_id   text NOT NULL,
    agent_id      text,
    channel       text NOT NULL DEFAULT 'voice',       -- voice, chat, email ...
    started_at    timestamptz NOT NULL,
    answered_at   timestamptz,
    ended_at      timestamptz,
    hold_seconds  double precision NOT NULL DEFAULT 0,
    acw_seconds   double precision NOT NULL DEFAULT 0, -- after-call work
    audio_path    text,
    audio_layout  text NOT NULL DEFAULT 'auto',        -- auto, mono, stereo (agent left, customer right)
    intent        text,                                -- known intent (CRM disposition), if any
    resolved      boolean,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at);
CREATE INDEX calls_tenant_customer ON calls (tenant_id, customer_id, started_at);

CREATE TABLE call_turns (
    call_id      text NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id    text NOT NULL,
    turn_index   integer NOT NULL,
    speaker_role text NOT NULL CHECK (speaker_role IN ('agent', 'customer', 'system', 'unknown')),
    start_s      double precision NOT NULL,
    end_s        double precision NOT NULL,
    text         text NOT NULL DEFAULT '',
    PRIMARY KEY (call_id, turn_index)
);
CREATE INDEX call_turns_tenant ON call_turns (tenant_id, call_id);

CREATE TABLE call_analytics (
    call_id             text PRIMARY KEY REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id           text NOT NULL,
    num_speakers        integer,
    diarization         jsonb,
    emotion             jsonb,
    intent              text,
    intent_confidence   double precision,
    summary             text,
    talk_seconds        double precision,
    silence_seconds     double precision,
    overlap_seconds     double precision,
    interruptions       integer,
    aht_seconds         double precision,
    sentiment_start     double precision,
    sentiment_end       double precision,
    sentiment_mean      double precision,
    details             jsonb NOT NULL DEFAULT '{}',
    model_versions      jsonb NOT NULL DEFAULT '{}',
    processed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_analytics_tenant ON call_analytics (tenant_id, processed_at);

CREATE TABLE documents (
    id            text NOT NULL,
    tenant_id     text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    source_path   text NOT NULL,
    content_hash  text NOT NULL,
    mime_type     text NOT NULL,
    title         text,
    pages         integer,
    chunk_count   integer NOT NULL DEFAULT 0,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE document_chunks (
    tenant_id    text NOT NULL,
    document_id  text NOT NULL,
    position     integer NOT NULL,
    page         integer,
    heading      text,
    text         text NOT NULL,
    embedding    vector(384) NOT NULL,
    PRIMARY KEY (tenant_id, document_id, position),
    FOREIGN KEY (tenant_id, document_id) REFERENCES documents(tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX document_chunks_embedding ON document_chunks USING hnsw (embedding vector_cosine_ops);

CREATE TABLE sessions (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    redis_key   text,
    data        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_tenant ON sessions (tenant_id);
