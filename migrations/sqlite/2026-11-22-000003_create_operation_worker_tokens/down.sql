DROP TABLE operation_worker_tokens;
