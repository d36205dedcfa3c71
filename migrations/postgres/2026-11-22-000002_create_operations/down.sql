DROP TABLE operation_logs;
DROP TABLE operations;
