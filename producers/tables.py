"""Table names, what each table's schema does not say, topic naming and message keys.

A table's fields are defined once, in its Avro schema (``schemas/``, read by
``producers.columns``); its declaration here adds how records are identified,
loaded and partitioned. The worker's table specs and the producer's message
keys are derived from both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SIMULATION_RUNS: Final = "simulation_runs"
AGENTS: Final = "agents"
AGENT_MEMORIES: Final = "agent_memories"
MARKET_TRANSACTIONS: Final = "market_transactions"
BANKING_TRANSACTIONS: Final = "banking_transactions"
SIMULATION_EVENTS: Final = "simulation_events"

#: All tables, parents first: loading in this order keeps foreign keys valid.
TABLES: Final[tuple[str, ...]] = (
    SIMULATION_RUNS,
    AGENTS,
    AGENT_MEMORIES,
    MARKET_TRANSACTIONS,
    BANKING_TRANSACTIONS,
    SIMULATION_EVENTS,
)



@dataclass(frozen=True, slots=True)
class Table:
    """How a table's records are identified, loaded and partitioned."""

    name: str
    #: The idempotency key: a record with an existing key is a duplicate or a conflict.
    key: tuple[str, ...]
    #: The column naming the run a record belongs to (its parent; a stub when missing).
    run_column: str
    #: Event-time and bookkeeping columns: a re-sent fact may differ there and still be a duplicate.
    event_time: tuple[str, ...]
    #: Field that, after the run, keys Kafka messages, so one entity's records keep their order.
    partition_by: str | None = None
    #: Newest ``updated_at`` wins (a state that changes), instead of insert-if-absent (a fact).
    upsert: bool = False
    #: Column naming an agent of the run (a reference to ``agents``; a stub when missing).
    agent_column: str | None = None


DECLARATIONS: Final[dict[str, Table]] = {
    t.name: t
    for t in (
        Table(SIMULATION_RUNS, key=("run_id",), run_column="run_id", event_time=("updated_at",), upsert=True),
        Table(AGENTS, key=("creation_run_id", "agent_id_str"), run_column="creation_run_id",
              event_time=("updated_at",), upsert=True),
        Table(AGENT_MEMORIES, key=("memory_id",), run_column="simulation_run_id", event_time=("real_timestamp",),
              partition_by="agent_id_str", agent_column="agent_id_str"),
        Table(MARKET_TRANSACTIONS, key=("simulation_run_id", "transaction_sim_id"), run_column="simulation_run_id",
              event_time=("real_timestamp",), partition_by="market_id"),
        Table(BANKING_TRANSACTIONS, key=("simulation_run_id", "transaction_sim_id"), run_column="simulation_run_id",
              event_time=("real_timestamp",), partition_by="account_id"),
        Table(SIMULATION_EVENTS, key=("event_uid",), run_column="simulation_run_id", event_time=("real_timestamp",),
              partition_by="agent_id_primary"),
    )
}


def message_key(table: str, record: Mapping[str, Any], run: str | None = None) -> str:
    """Kafka message key of a record: its run, then its entity (see ``Table.partition_by``).

    `run` is the record's run id as text, when the caller has it formatted already.
    """
    decl = DECLARATIONS[table]
    if run is None:
        run = str(record[decl.run_column])
    entity = record.get(decl.partition_by) if decl.partition_by else None
    return f"{run}/{entity}" if entity else run


DLQ_SUFFIX: Final = "dlq"
DEFAULT_TOPIC_PREFIX: Final = "society"
#: What a topic prefix may contain (Kafka topic names allow these characters only).
TOPIC_PREFIX_PATTERN: Final = r"^[A-Za-z0-9._-]+$"


def topic_for(prefix: str, table: str) -> str:
    """Return the topic that carries `table`: ``<prefix>.<table>``."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    return f"{prefix}.{table}"


def dlq_topic(prefix: str) -> str:
    """Return the dead-letter topic of a prefix: ``<prefix>.dlq``."""
    return f"{prefix}.{DLQ_SUFFIX}"


def table_of_topic(prefix: str, topic: str) -> str | None:
    """Return the table a topic carries, or None for a foreign topic."""
    head, _, table = topic.rpartition(".")
    if head != prefix or table not in TABLES:
        return None
    return table
