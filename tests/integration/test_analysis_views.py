"""The analysis views (ddl/0009) on a small known run: every figure computed by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from consumers.errors import ConfigurationError
from consumers.views import MATERIALIZED, VIEWS, refresh
from support.db import fetch, url_with

pytestmark = pytest.mark.integration

RUN, OTHER = uuid.UUID(int=1), uuid.UUID(int=2)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _insert_known_runs(url: str) -> None:
    """RUN: agents a1, a2, a3; OTHER: b1, b2 with a negative balance (and rows that must not leak into RUN)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO simulation_runs (run_id, status, updated_at) VALUES (%s, 'completed', now()), "
                  "(%s, 'completed', now())", (RUN, OTHER))
        c.execute("INSERT INTO agents (agent_id_str, creation_run_id, creation_step, updated_at) VALUES "
                  "('a1', %(r)s, 0, now()), ('a2', %(r)s, 0, now()), ('a3', %(r)s, 0, now()), "
                  "('b1', %(o)s, 0, now()), ('b2', %(o)s, 0, now())", {"r": RUN, "o": OTHER})
        market = [  # run, id, step, resource, quantity, price
            (RUN, "m1", 1, "food", 2, 3.0), (RUN, "m2", 1, "food", 6, 5.0), (RUN, "m3", 1, "tools", 1, 10.0),
            (RUN, "m4", 2, "food", 4, 2.5), (OTHER, "m1", 1, "food", 100, 99.0),
        ]
        c.cursor().executemany(
            "INSERT INTO market_transactions (simulation_run_id, transaction_sim_id, step_timestamp, market_id, "
            "resource_type, buyer_agent_id, seller_agent_id, quantity, price_per_unit, total_cost) "
            "VALUES (%s, %s, %s, 'market_' || %s, %s, 'a1', 'a2', %s, %s, 0)",
            [(r, i, s, res, res, q, p) for r, i, s, res, q, p in market])
        bank = [  # run, id, step, seconds, account, agent, amount, balance_after
            (RUN, "t1", 0, 0, "acct_a1", "a1", 100, 100),
            (RUN, "t2", 1, 10, "acct_a1_savings", "a1", 50, 50),
            (RUN, "t3", 1, 11, "acct_a2", "a2", 20, 20),
            (RUN, "t5", 2, 21, "acct_a1", "a1", 10, 70),  # the later of a1's two step-2 rows, loaded first
            (RUN, "t4", 2, 20, "acct_a1", "a1", -40, 60),
            (RUN, "t6", 3, 30, "acct_a2", "a2", 10, 30),
            (RUN, "t7", 3, 31, "acct_a3", "a3", 50, 50),
            (OTHER, "t1", 0, 0, "acct_b1", "b1", -10, -10),
            (OTHER, "t2", 0, 0, "acct_b2", "b2", 30, 30),
        ]
        c.cursor().executemany(
            "INSERT INTO banking_transactions (simulation_run_id, transaction_sim_id, step_timestamp, real_timestamp, "
            "account_id, agent_id_str, transaction_type, amount, balance_after) VALUES (%s, %s, %s, %s, %s, %s, "
            "'deposit', %s, %s)", [(r, i, s, at(t), a, g, amt, bal) for r, i, s, t, a, g, amt, bal in bank])
        events = [(RUN, 0, "MOVE"), (RUN, 0, "MOVE"), (RUN, 0, "TRADE"), (RUN, 1, "MOVE"), (OTHER, 0, "MOVE")]
        c.cursor().executemany(
            "INSERT INTO simulation_events (event_uid, simulation_run_id, step_timestamp, event_type) "
            "VALUES (gen_random_uuid(), %s, %s, %s)", events)
        memories = [  # agent, step, importance, real_timestamp, loaded_at (seconds)
            ("a1", 0, 0.25, 0, 1), ("a1", 0, 0.75, 0, 2), ("a2", 0, None, 1, 5), ("a1", 1, 1.0, 10, None),
        ]
        c.cursor().executemany(
            "INSERT INTO agent_memories (agent_id_str, simulation_run_id, step_timestamp, real_timestamp, content, "
            "importance, loaded_at) VALUES (%s, %s, %s, %s, 'm', %s, %s)",
            [(a, RUN, s, at(rt), imp, None if la is None else at(la)) for a, s, imp, rt, la in memories])


@pytest.fixture
def known(database_url: str) -> str:
    _insert_known_runs(database_url)
    refresh(database_url)
    return database_url


def rows(url: str, sql: str, run: uuid.UUID = RUN) -> list[tuple]:
    return fetch(url, sql, (run,))


def test_market_prices_per_resource_and_step(known):
    assert rows(known, "SELECT resource_type, step, trades, volume, turnover, vwap, min_price, max_price "
                       "FROM market_prices WHERE run_id = %s ORDER BY 1, 2") == [
        # (2·3 + 6·5) / 8 = 36 / 8 = 4.5
        ("food", 1, 2, 8.0, 36.0, 4.5, 3.0, 5.0),
        ("food", 2, 1, 4.0, 10.0, 2.5, 2.5, 2.5),
        ("tools", 1, 1, 1.0, 10.0, 10.0, 10.0, 10.0),
    ]


def test_bank_balances_are_the_last_balance_per_account_carried_forward_and_summed(known):
    assert rows(known, "SELECT agent_id_str, step, balance, accounts, transactions, net_amount "
                       "FROM bank_balances WHERE run_id = %s ORDER BY 1, 2") == [
        ("a1", 0, 100.0, 1, 1, 100.0),
        ("a1", 1, 150.0, 2, 1, 50.0),   # 100 carried + 50 in savings
        ("a1", 2, 120.0, 2, 2, -30.0),  # acct_a1 ends step 2 at 70 (its later row), savings 50 carried
        ("a1", 3, 120.0, 2, 0, 0.0),    # carried to the run's last bank step
        ("a2", 1, 20.0, 1, 1, 20.0),
        ("a2", 2, 20.0, 1, 0, 0.0),
        ("a2", 3, 30.0, 1, 1, 10.0),
        ("a3", 3, 50.0, 1, 1, 50.0),    # unknown before its first transaction: no row
    ]
    # a count, as bigint (ddl/0010): not sum()'s numeric
    assert rows(known, "SELECT DISTINCT pg_typeof(transactions)::text FROM bank_balances WHERE run_id = %s") == [
        ("bigint",)]


def test_wealth_distribution_per_step(known):
    got = rows(known, "SELECT step, agents, total, mean, min, p10, p25, median, p75, p90, max, gini "
                      "FROM wealth_distribution WHERE run_id = %s ORDER BY step")
    expected = [
        (0, 1, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 0.0),
        # [20, 150]: p10 = 20 + 0.1·130; Gini = |20 − 150|·2 / (2·2²·85) = 260 / 680
        (1, 2, 170.0, 85.0, 20.0, 33.0, 52.5, 85.0, 117.5, 137.0, 150.0, 260 / 680),
        # [20, 120]: Gini = 200 / (8·70)
        (2, 2, 140.0, 70.0, 20.0, 30.0, 45.0, 70.0, 95.0, 110.0, 120.0, 200 / 560),
        # [30, 50, 120]: p10 = 30 + 0.2·20, p90 = 50 + 0.8·70; Gini = 2·(20 + 90 + 70) / (2·3²·200/3) = 360 / 1200
        (3, 3, 200.0, 200 / 3, 30.0, 34.0, 40.0, 50.0, 85.0, 106.0, 120.0, 0.3),
    ]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-9), g


def test_gini_is_null_when_a_balance_is_negative(known):
    assert rows(known, "SELECT step, agents, total, min, gini FROM wealth_distribution WHERE run_id = %s",
                OTHER) == [(0, 2, 20.0, -10.0, None)]


def test_event_counts_by_type_per_step(known):
    assert rows(known, "SELECT step, event_type, events FROM event_counts WHERE run_id = %s ORDER BY 1, 2") == [
        (0, "MOVE", 2), (0, "TRADE", 1), (1, "MOVE", 1),
    ]


def test_memories_per_agent_per_step(known):
    assert rows(known, "SELECT agent_id_str, step, memories, mean_importance FROM memory_counts "
                       "WHERE run_id = %s ORDER BY 1, 2") == [
        ("a1", 0, 2, 0.5), ("a1", 1, 1, 1.0), ("a2", 0, 1, None),
    ]


def test_ingestion_lag_per_table_and_step(known):
    got = rows(known, "SELECT table_name, step, rows, rows_unknown, lag_p50_s, lag_p95_s, lag_max_s "
                      "FROM ingestion_lag WHERE run_id = %s AND table_name = 'agent_memories' ORDER BY step")
    # Step 0 lags 1, 2, 4 s: p95 = 2 + 0.9·(4 − 2). Step 1: loaded before 0009 (no loaded_at).
    assert got == [("agent_memories", 0, 3, 0, 2.0, pytest.approx(3.8), 4.0),
                   ("agent_memories", 1, 1, 1, None, None, None)]
    # Rows inserted without loaded_at get the loading transaction's start: lag = now() − real_timestamp.
    (events,) = rows(known, "SELECT rows, rows_unknown FROM ingestion_lag WHERE run_id = %s "
                            "AND table_name = 'simulation_events' AND step = 0")
    assert events == (3, 0)


def test_materialized_views_change_only_on_refresh(known):
    with psycopg.connect(known, autocommit=True) as c:
        c.execute("INSERT INTO banking_transactions (simulation_run_id, transaction_sim_id, step_timestamp, "
                  "account_id, agent_id_str, transaction_type, amount, balance_after) "
                  "VALUES (%s, 't8', 4, 'acct_a3', 'a3', 'deposit', 10, 60)", (RUN,))
    steps = "SELECT max(step) FROM wealth_distribution WHERE run_id = %s"
    assert rows(known, steps) == [(3,)]
    assert rows(known, "SELECT max(step) FROM bank_balances WHERE run_id = %s") == [(4,)]  # plain: current
    done = refresh(known, concurrently=True)
    assert [r.view for r in done] == list(MATERIALIZED)
    assert rows(known, steps) == [(4,)]


@pytest.mark.parametrize("concurrently", [False, True])
def test_refresh_is_one_transaction_and_a_held_lock_fails_within_the_timeout(known, concurrently):
    from consumers.views import LockTimeoutError

    with psycopg.connect(known, autocommit=True) as c:
        c.execute("INSERT INTO banking_transactions (simulation_run_id, transaction_sim_id, step_timestamp, "
                  "account_id, agent_id_str, transaction_type, amount, balance_after) "
                  f"VALUES (%s, 't9-{concurrently}', 9, 'acct_a3', 'a3', 'deposit', 1, 61)", (RUN,))
    steps = "SELECT max(step) FROM wealth_distribution WHERE run_id = %s"
    before = rows(known, steps)
    with psycopg.connect(known) as holder:
        holder.execute("REFRESH MATERIALIZED VIEW ingestion_lag")  # holds it locked until it ends: the second view
        with pytest.raises(LockTimeoutError, match=r"^refreshing ingestion_lag waited more than 0.5s for a lock on "
                                                   r"the view itself: another session holds one "):
            refresh(known, concurrently=concurrently, timeout_s=0.5)
        holder.rollback()
    assert rows(known, steps) == before  # wealth_distribution's refresh was rolled back with the failure
    refresh(known, concurrently=concurrently, timeout_s=10)
    assert rows(known, steps) == [(9,)]


@pytest.mark.parametrize(("table", "view"), [("banking_transactions", "wealth_distribution"),
                                             ("market_transactions", "ingestion_lag")])
def test_a_locked_table_is_named_as_what_the_refresh_waited_for(known, table, view):
    from consumers.views import LockTimeoutError

    with psycopg.connect(known) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # not the view: a table it reads
        with pytest.raises(LockTimeoutError) as e:
            refresh(known, timeout_s=0.5)
        holder.rollback()
    assert str(e.value) == (f"refreshing {view} waited more than 0.5s for a lock on {table}, a table it reads: "
                            "another session holds or waits for a conflicting lock (a LOCK TABLE, a migration; "
                            "see pg_locks)")


def test_the_reader_role_selects_every_view(known):
    name = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(known, autocommit=True) as c:
        c.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'role-pw' IN ROLE society_reader")
    try:
        reader = url_with(known, user=name, password="role-pw")
        for view in VIEWS:
            assert fetch(reader, f"SELECT count(*) FROM {view}")[0][0] > 0, view
        with pytest.raises(ConfigurationError, match="cannot refresh wealth_distribution: must be owner of "
                                                     "materialized view wealth_distribution; refresh the views as "
                                                     "their owner, the role that runs `society-ingest migrate`"):
            refresh(reader)
    finally:
        with psycopg.connect(known, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {name}")
            c.execute(f"DROP ROLE {name}")
