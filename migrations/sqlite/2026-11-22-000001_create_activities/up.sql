-- The activity feed: append-only, paged backwards by id.
CREATE TABLE activities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT,
    actor TEXT NOT NULL,
    verb TEXT NOT NULL,
    object TEXT,
    -- JSON text
    data TEXT,
    -- milliseconds since the Unix epoch
    created_at BIGINT NOT NULL
);
CREATE INDEX activities_project_id ON activities (project, id);
