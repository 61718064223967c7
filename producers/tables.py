"""Table names, topic naming and message keys: the contract shared by both sides."""

from __future__ import annotations

from typing import Final

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
