-- What a worker says about the work beyond one progress number (JSON text, an object).
ALTER TABLE operations ADD COLUMN details TEXT;
-- `GET /api/operations?target=…` (with or without `active=`), newest first.
CREATE INDEX operations_target ON operations (target, id);
