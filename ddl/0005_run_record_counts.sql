-- What the producer recorded per table in a run, sent with the run's final status
-- (simulation_runs schema v2), so that `society-ingest status --run ID` can tell a
-- complete run from one still in flight or one with records missing.
-- NULL: the run has not ended, or its producer predates schema v2.
ALTER TABLE simulation_runs ADD COLUMN record_counts JSONB;
