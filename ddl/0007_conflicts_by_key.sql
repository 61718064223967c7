-- A conflict is kept once per key and incoming record (replays find it again):
-- the check looks conflicts up by key.
CREATE INDEX ingest_conflicts_key_idx ON ingest_conflicts (table_name, record_key);
