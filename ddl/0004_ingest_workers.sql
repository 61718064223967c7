-- One row per worker process, updated in every batch transaction: which workers
-- are alive, when each last committed, and what it has done. A worker that stops
-- committing (stuck, degraded, dead) shows as an old last_commit_at in `status`.
CREATE TABLE ingest_workers (
    worker_id      TEXT        PRIMARY KEY,
    consumer_group TEXT        NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_commit_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    batches        BIGINT      NOT NULL DEFAULT 0,
    rows_loaded    BIGINT      NOT NULL DEFAULT 0,
    dead_lettered  BIGINT      NOT NULL DEFAULT 0,
    retries        BIGINT      NOT NULL DEFAULT 0,
    last_error     TEXT
);
