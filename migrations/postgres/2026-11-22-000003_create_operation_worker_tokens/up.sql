-- A per-operation capability for external workers: only its SHA-256 is stored.
CREATE TABLE operation_worker_tokens (
    operation_id TEXT PRIMARY KEY REFERENCES operations (id) ON DELETE CASCADE,
    token_sha256 TEXT NOT NULL
);
