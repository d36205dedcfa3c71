DROP INDEX operations_lease;
DROP INDEX operations_owner;
ALTER TABLE operations DROP COLUMN holds_slot;
ALTER TABLE operations DROP COLUMN fence;
ALTER TABLE operations DROP COLUMN lease_expires;
ALTER TABLE operations DROP COLUMN owner;
