-- bank_balances.transactions as bigint (a count), not numeric (sum(bigint) is numeric in
-- PostgreSQL). A view column cannot change type in place: bank_balances and the view built
-- on it (wealth_distribution, materialized) are dropped and made again as in 0009, with the
-- cast; wealth_distribution comes back filled (CREATE MATERIALIZED VIEW runs its query),
-- with its unique index and the readers' grant.
DROP MATERIALIZED VIEW wealth_distribution;
DROP VIEW bank_balances;
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
       sum(CASE WHEN s = step THEN transactions ELSE 0 END)::bigint AS transactions,
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

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'society_reader') THEN
        GRANT SELECT ON bank_balances, wealth_distribution TO society_reader;
    ELSE
        RAISE NOTICE 'role society_reader does not exist: no grants on the analysis views made';
    END IF;
END
$grants$;
