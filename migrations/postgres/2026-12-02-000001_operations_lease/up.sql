-- Cluster mode: which node owns an active operation, until when (its lease, milliseconds since
-- the epoch on the database's clock), and the fencing token of that ownership (bumped by every
-- takeover; every write the owner makes is conditioned on it). Single-node servers leave them
-- unset.
ALTER TABLE operations ADD COLUMN owner TEXT;
ALTER TABLE operations ADD COLUMN lease_expires BIGINT;
ALTER TABLE operations ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
-- The operation holds one of its kind's concurrency slots, counted across nodes while it is
-- active (a limited kind's start claims one under an advisory lock on the kind).
ALTER TABLE operations ADD COLUMN holds_slot BOOLEAN NOT NULL DEFAULT FALSE;
-- The heartbeat renews by owner; the takeover claim looks for active rows by lease expiry.
CREATE INDEX operations_owner ON operations (owner) WHERE status IN ('queued', 'running', 'cancelling');
CREATE INDEX operations_lease ON operations (lease_expires) WHERE status IN ('queued', 'running', 'cancelling');
