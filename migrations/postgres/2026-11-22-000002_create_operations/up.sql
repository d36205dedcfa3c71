-- Long-running operations. Timestamps are milliseconds since the Unix epoch; JSON is text.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    project TEXT,
    runner TEXT NOT NULL,
    status TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    stage TEXT,
    stages TEXT NOT NULL,
    message TEXT,
    eta_seconds BIGINT,
    result TEXT,
    error TEXT,
    params TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    log_offset BIGINT NOT NULL DEFAULT 0
);
-- At most one active operation per (kind, target), enforced by the database so concurrent
-- starts cannot both win.
CREATE UNIQUE INDEX operations_one_active_per_target ON operations (kind, target)
    WHERE status IN ('queued', 'running', 'cancelling');
CREATE INDEX operations_status ON operations (status, id);
CREATE INDEX operations_project ON operations (project, id);
CREATE INDEX operations_finished_at ON operations (finished_at);

CREATE TABLE operation_logs (
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (operation_id, seq)
);
