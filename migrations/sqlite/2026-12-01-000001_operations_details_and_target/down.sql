DROP INDEX operations_target;
ALTER TABLE operations DROP COLUMN details;
