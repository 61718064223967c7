-- Analysis: the load time of each row, and views for the questions analysts ask.
--
-- loaded_at (agent_memories, market_transactions, banking_transactions, simulation_events)
--   When the row reached PostgreSQL: the DEFAULT now() is the start of the loading
--   transaction (the worker's batch), not of the statement or the row. The loader COPYs
--   an explicit column list without it, so the default fills it; no Avro field carries it,
--   export leaves it out and backfill ignores it, like the surrogate keys. Rows loaded
--   before this migration keep NULL (unknown): the column is added first and given its
--   default afterwards, so they are not stamped with the migration's time.
--   Ingestion lag = loaded_at - real_timestamp (the producer's clock at recording).
--
-- The views (every one keyed by run; steps are step_timestamp):
--   market_prices        run, resource, step: trades, volume, turnover, VWAP, min, max price
--   bank_balances        run, agent, step: the agent's bank balance, carried forward
--   wealth_distribution  run, step: the distribution of those balances over agents
--   event_counts         run, step, event type: events
--   memory_counts        run, agent, step: memories
--   ingestion_lag        run, table, step: rows and their loaded_at - real_timestamp
-- Materialized where it pays (measured on two runs of 2,500 agents × 100 steps, the
-- report's queries for one run; README "Analysis"): wealth_distribution (plain ~870 ms,
-- materialized <1 ms: percentiles and ranks over every agent's carried balance at every
-- step) and ingestion_lag (plain ~600 ms, <1 ms: percentiles over every row of four
-- tables). The others stay plain views, always current: they group one table with the
-- run's filter pushed down (market_prices ~10 ms, event_counts ~100 ms), or their rows
-- are as many as the table's (memory_counts: about one memory per agent and step;
-- bank_balances: agents × steps, ~60 ms for one agent's series). Materialized views are
-- as fresh as their last refresh: `society-ingest views refresh [--concurrently]` (as
-- their owner, the role that migrates); each has the unique index REFRESH … CONCURRENTLY
-- needs. society_reader may SELECT every view (granted below, as 0006 does for tables).

ALTER TABLE agent_memories ADD COLUMN loaded_at TIMESTAMPTZ;
ALTER TABLE agent_memories ALTER COLUMN loaded_at SET DEFAULT now();
ALTER TABLE market_transactions ADD COLUMN loaded_at TIMESTAMPTZ;
ALTER TABLE market_transactions ALTER COLUMN loaded_at SET DEFAULT now();
ALTER TABLE banking_transactions ADD COLUMN loaded_at TIMESTAMPTZ;
ALTER TABLE banking_transactions ALTER COLUMN loaded_at SET DEFAULT now();
ALTER TABLE simulation_events ADD COLUMN loaded_at TIMESTAMPTZ;
ALTER TABLE simulation_events ALTER COLUMN loaded_at SET DEFAULT now();

-- Market price and volume per resource per step. REALs are summed as double precision.
--   volume   = sum(quantity); turnover = sum(quantity * price_per_unit)
--   vwap     = turnover / volume (NULL when the volume is 0)
CREATE VIEW market_prices AS
SELECT simulation_run_id AS run_id,
       resource_type,
       step_timestamp AS step,
       count(*) AS trades,
       sum(quantity::float8) AS volume,
       sum(quantity::float8 * price_per_unit::float8) AS turnover,
       sum(quantity::float8 * price_per_unit::float8) / NULLIF(sum(quantity::float8), 0) AS vwap,
       min(price_per_unit::float8) AS min_price,
       max(price_per_unit::float8) AS max_price
FROM market_transactions
GROUP BY simulation_run_id, resource_type, step_timestamp;
COMMENT ON VIEW market_prices IS
    'Per run, resource and step: trades, volume = sum(quantity), turnover = sum(quantity*price), '
    'vwap = turnover/volume, min and max price_per_unit.';

-- Each agent's bank balance over time, from the balances the simulation records
-- (banking_transactions.balance_after), not re-summed from amounts:
--   an account's balance at step s = balance_after of its last transaction at or before s
--   (last: latest real_timestamp, then the latest loaded row); the agent's balance = the sum
--   over its accounts. An account counts from its first transaction to the run's last step
--   with any bank transaction; before its first transaction its balance is unknown (no row).
--   transactions / net_amount: the agent's bank transactions in that step (0 when carried).
CREATE VIEW bank_balances AS
WITH per_step AS (
    SELECT simulation_run_id AS run_id, agent_id_str, account_id, step_timestamp AS step,
           (array_agg(balance_after::float8 ORDER BY real_timestamp DESC NULLS LAST, transaction_id_pk DESC))[1]
               AS balance,
           count(*) AS transactions,
           sum(amount::float8) AS net_amount
    FROM banking_transactions
    GROUP BY simulation_run_id, agent_id_str, account_id, step_timestamp
), spans AS (
    SELECT p.*,
           coalesce(lead(step) OVER (PARTITION BY run_id, agent_id_str, account_id ORDER BY step) - 1,
                    max(step) OVER (PARTITION BY run_id)) AS until_step
    FROM per_step p
)
SELECT run_id,
       agent_id_str,
       s AS step,
       sum(balance) AS balance,
       count(*) AS accounts,
       sum(CASE WHEN s = step THEN transactions ELSE 0 END) AS transactions,
       sum(CASE WHEN s = step THEN net_amount ELSE 0 END) AS net_amount
FROM spans, generate_series(step, until_step) AS s
GROUP BY run_id, agent_id_str, s;
COMMENT ON VIEW bank_balances IS
    'Per run, agent and step: the sum over the agent''s accounts of the balance_after of each '
    'account''s last transaction at or before the step (carried forward to the run''s last bank step); '
    'transactions and net_amount of that step.';

-- Wealth distribution per step: over the agents with a known balance at that step
-- (bank_balances). Percentiles are interpolated (percentile_cont). gini: the Gini
-- coefficient of the balances, 0 = equal, 1 = one agent holds everything; NULL when any
-- balance is negative or the total is not positive (it is not defined there).
CREATE MATERIALIZED VIEW wealth_distribution AS
WITH ranked AS (
    SELECT run_id, step, balance,
           row_number() OVER (PARTITION BY run_id, step ORDER BY balance) AS rank
    FROM bank_balances
)
SELECT run_id,
       step,
       count(*) AS agents,
       sum(balance) AS total,
       avg(balance) AS mean,
       min(balance) AS min,
       percentile_cont(0.10) WITHIN GROUP (ORDER BY balance) AS p10,
       percentile_cont(0.25) WITHIN GROUP (ORDER BY balance) AS p25,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY balance) AS median,
       percentile_cont(0.75) WITHIN GROUP (ORDER BY balance) AS p75,
       percentile_cont(0.90) WITHIN GROUP (ORDER BY balance) AS p90,
       max(balance) AS max,
       CASE WHEN min(balance) >= 0 AND sum(balance) > 0
            THEN 2 * sum(rank * balance) / (count(*) * sum(balance)) - (count(*) + 1)::float8 / count(*)
       END AS gini
FROM ranked
GROUP BY run_id, step;
CREATE UNIQUE INDEX wealth_distribution_key ON wealth_distribution (run_id, step);
COMMENT ON MATERIALIZED VIEW wealth_distribution IS
    'Per run and step, over agents with a known balance (bank_balances): count, total, mean, min, '
    'p10, p25, median, p75, p90 (interpolated), max, and the Gini coefficient (NULL with negative balances).';

CREATE VIEW event_counts AS
SELECT simulation_run_id AS run_id, step_timestamp AS step, event_type, count(*) AS events
FROM simulation_events
GROUP BY simulation_run_id, step_timestamp, event_type;
COMMENT ON VIEW event_counts IS 'Per run, step and event_type: the number of events.';

CREATE VIEW memory_counts AS
SELECT simulation_run_id AS run_id, agent_id_str, step_timestamp AS step,
       count(*) AS memories, avg(importance::float8) AS mean_importance
FROM agent_memories
GROUP BY simulation_run_id, agent_id_str, step_timestamp;
COMMENT ON VIEW memory_counts IS
    'Per run, agent and step: the number of memories and their mean importance (NULLs left out).';

-- Ingestion lag per table and step: loaded_at - real_timestamp in seconds, over the rows
-- that have both (rows loaded before 0009 have no loaded_at: counted in rows_unknown).
CREATE MATERIALIZED VIEW ingestion_lag AS
WITH loaded AS (
    SELECT 'agent_memories'::text AS table_name, simulation_run_id, step_timestamp, real_timestamp, loaded_at
    FROM agent_memories
    UNION ALL
    SELECT 'market_transactions', simulation_run_id, step_timestamp, real_timestamp, loaded_at
    FROM market_transactions
    UNION ALL
    SELECT 'banking_transactions', simulation_run_id, step_timestamp, real_timestamp, loaded_at
    FROM banking_transactions
    UNION ALL
    SELECT 'simulation_events', simulation_run_id, step_timestamp, real_timestamp, loaded_at
    FROM simulation_events
), lags AS (
    SELECT table_name, simulation_run_id, step_timestamp,
           extract(epoch FROM loaded_at - real_timestamp)::float8 AS lag_s
    FROM loaded
)
SELECT simulation_run_id AS run_id,
       table_name,
       step_timestamp AS step,
       count(*) AS rows,
       count(*) - count(lag_s) AS rows_unknown,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY lag_s) AS lag_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_s) AS lag_p95_s,
       max(lag_s) AS lag_max_s
FROM lags
GROUP BY simulation_run_id, table_name, step_timestamp;
CREATE UNIQUE INDEX ingestion_lag_key ON ingestion_lag (run_id, table_name, step);
COMMENT ON MATERIALIZED VIEW ingestion_lag IS
    'Per run, table and step: rows, rows without loaded_at (loaded before migration 0009), and the '
    'median, 95th percentile and maximum of loaded_at - real_timestamp in seconds.';

-- Readers read the views (0006's default privileges cover them when the role that ran
-- 0006 made the roles; granted explicitly for roles made since).
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'society_reader') THEN
        GRANT SELECT ON market_prices, bank_balances, wealth_distribution, event_counts, memory_counts,
                        ingestion_lag TO society_reader;
    ELSE
        RAISE NOTICE 'role society_reader does not exist: no grants on the analysis views made';
    END IF;
END
$grants$;
