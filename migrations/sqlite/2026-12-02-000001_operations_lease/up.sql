-- The same columns as PostgreSQL's (cluster mode's operation leases), so one schema serves both
-- backends; SQLite is one node's and never sets them.
ALTER TABLE operations ADD COLUMN owner TEXT;
ALTER TABLE operations ADD COLUMN lease_expires BIGINT;
ALTER TABLE operations ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN holds_slot BOOLEAN NOT NULL DEFAULT 0;
