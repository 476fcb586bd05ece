-- Issue 17 part 3: PII redaction. A tenant's own setting (NULL: the deployment's PII_REDACTION /
-- PII_REDACT_DOCUMENTS) and, per analysed call, how many PII items were redacted and of which kinds
-- ({"CARD": 1, "PHONE": 2}); the redacted text itself replaces the original in call_turns.
ALTER TABLE tenants
    ADD COLUMN pii_redaction        boolean,
    ADD COLUMN pii_redact_documents boolean;
ALTER TABLE call_analytics
    ADD COLUMN pii_redactions       integer NOT NULL DEFAULT 0,
    ADD COLUMN pii_redaction_counts jsonb NOT NULL DEFAULT '{}';
