-- The activity feed: append-only, paged backwards by id.
CREATE TABLE activities (
    id BIGSERIAL PRIMARY KEY,
    project TEXT,
    actor TEXT NOT NULL,
    verb TEXT NOT NULL,
    object TEXT,
    -- JSON text (kept as text so both backends share one schema)
    data TEXT,
    -- milliseconds since the Unix epoch
    created_at BIGINT NOT NULL
);
CREATE INDEX activities_project_id ON activities (project, id);
