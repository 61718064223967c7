-- Dead letters already sent back to their topics by `society-ingest dlq redrive`,
-- so running redrive again does not send them twice.
CREATE TABLE dlq_redrives (
    dlq_topic     TEXT    NOT NULL,
    dlq_partition INTEGER NOT NULL,
    dlq_offset    BIGINT  NOT NULL,
    target_topic  TEXT    NOT NULL,
    redriven_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
