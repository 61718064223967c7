-- Bookkeeping of the loader itself (not part of the seed schema).

-- Next Kafka offset to consume per consumer group and partition, written in
-- the same transaction as the rows those offsets produced. This, not Kafka's
-- committed offsets, is the source of truth: a worker seeks here on partition
-- assignment, so a crash between the database commit and the Kafka commit
-- neither loses nor duplicates rows.
CREATE TABLE ingest_offsets (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset    BIGINT  NOT NULL CHECK (next_offset >= 0),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Records whose idempotency key already existed with a different payload:
-- kept for an operator instead of being dropped silently.
CREATE TABLE ingest_conflicts (
    conflict_id     BIGSERIAL PRIMARY KEY,
    table_name      TEXT        NOT NULL,
    record_key      TEXT        NOT NULL,
    topic           TEXT,
    kafka_partition INTEGER,
    kafka_offset    BIGINT,
    incoming        JSONB       NOT NULL,
    detected_at     TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX ingest_conflicts_table_idx ON ingest_conflicts (table_name, detected_at);
