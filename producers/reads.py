"""Reading memories back: an agent's recent memories, ranked retrieval, read-your-writes.

    from producers.reads import MemoryReader, RetrievalWeights

    with MemoryReader("postgresql://reader@db/society") as reader:
        reader.recent_memories("agent_7", 10, run_id=run_id)
        reader.retrieve_memories("agent_7", "bread at the market", 5, run_id=run_id,
                                 weights=RetrievalWeights(relevance=2.0))
        reader.wait_until_landed(producer.sync(), timeout=30)

Needs psycopg: ``pip install 'society-ingest[read]'``. Without it, or when
PostgreSQL cannot be reached, calls raise ReadUnavailableError (the drop-in
handler turns that into an empty list and a warning instead). Calls block:
run them off the event loop (the handler does).

**Ranking** (in the spirit of generative agents' memory streams), in one
query: each candidate memory gets three scores in [0, 1] and is ranked by
``w_recency * recency + w_importance * importance + w_relevance * relevance``:

- recency = ``decay ** (current_step - step)``: 1 at `current_step` (default:
  the newest candidate's step), halved every ~69 steps at the default 0.99;
- importance = the stored importance (0..1 by the table's CHECK; NULL counts 0);
- relevance = ``ts_rank_cd`` of the memory's ``search_vector`` against the
  query's words (``to_tsvector('english', query)``: stemmed, stop words
  dropped) joined with OR, divided by the best candidate's: a memory holding
  more of the words, closer together, ranks higher; 0 for a memory holding
  none of them, and for all when the query has no words that count.

The candidates are the agent's `window` newest memories (of the run), read in
order from the index on (run, agent, step) (``ddl/0008``): the cost is bounded
by `window`, not by the size of the table or the length of the run. The limit
of that choice: a memory older than the `window` newest is never returned,
however relevant or important (with the default decay its recency is below
0.99**500 ≈ 0.0066). The GIN index on ``search_vector`` is not used here: it
serves searches across agents ("which memories of this run mention the
flood"); reading every match of common words in a large table to keep one
agent's would cost more than the agent's whole window.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import operator
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from producers._pg_pool import ConnectionPool
from producers.errors import NotLandedError

#: The workers' consumer group unless told otherwise (``consumers.settings.DEFAULT_GROUP``).
DEFAULT_LOADER_GROUP = "society-ingest"
#: Recency decays by this factor per step (0.99: half after ~69 steps).
DEFAULT_DECAY = 0.99
#: Newest memories of the agent considered per retrieval.
DEFAULT_WINDOW = 500
#: ln of the smallest recency (about 1e-304): below it PostgreSQL's exp() raises an underflow error.
MIN_LOG_RECENCY = -700
#: The largest weight: three scores of at most 1 times it stay far from float8's overflow.
MAX_WEIGHT = 1e6
#: Text-search configuration of ``agent_memories.search_vector`` (ddl/0008): queries must use the same.
TEXT_SEARCH_CONFIG = "english"
#: How often wait_until_landed looks at the stored offsets.
LANDED_POLL_S = 0.05

_COLUMNS = ("memory_id, simulation_run_id, agent_id_str, step_timestamp, real_timestamp, content, importance, "
            "tags, related_agent_id")
_RUN_SCOPE = "simulation_run_id = %(run)s AND agent_id_str = %(agent)s"
_ALL_RUNS_SCOPE = "agent_id_str = %(agent)s"
# memory_id last: a deterministic order for memories of one step stored at the same instant.
_NEWEST_FIRST = "step_timestamp DESC, real_timestamp DESC, memory_id DESC"

_RECENT_SQL = f"SELECT {_COLUMNS} FROM agent_memories WHERE {{scope}} ORDER BY {_NEWEST_FIRST} LIMIT %(count)s"

# The query's words as an OR query: natural-language queries rarely have every word in one memory.
_RETRIEVE_SQL = f"""
WITH q AS MATERIALIZED (
    SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS tsq
    FROM unnest(tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %(query)s))) AS lexeme),
candidates AS (
    SELECT {_COLUMNS}, search_vector FROM agent_memories
    WHERE {{scope}} ORDER BY {_NEWEST_FIRST} LIMIT %(window)s),
raw AS (
    SELECT c.*,
           -- decay ** gap as exp(ln(decay) * gap), floored: PostgreSQL raises on underflow, never rounds to 0.
           exp(greatest(ln(%(decay)s::float8)
                        * greatest(coalesce(%(now)s::int, max(c.step_timestamp) OVER ())::int8 - c.step_timestamp, 0),
                        {MIN_LOG_RECENCY})) AS recency,
           coalesce(c.importance, 0)::float8 AS importance_score,
           CASE WHEN c.search_vector @@ q.tsq THEN ts_rank_cd(c.search_vector, q.tsq) ELSE 0 END AS rank
    FROM candidates c, q),
scored AS (
    SELECT r.*, coalesce(r.rank / nullif(max(r.rank) OVER (), 0), 0)::float8 AS relevance FROM raw r)
SELECT {_COLUMNS}, recency, importance_score, relevance,
       %(w_recency)s * recency + %(w_importance)s * importance_score + %(w_relevance)s * relevance AS score
FROM scored
ORDER BY score DESC, {_NEWEST_FIRST}
LIMIT %(k)s
"""

_OFFSETS_SQL = """
SELECT topic, kafka_partition, next_offset FROM ingest_offsets
WHERE consumer_group = %s AND (topic, kafka_partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
"""


@dataclass(frozen=True, slots=True)
class Memory:
    """One stored memory."""

    memory_id: uuid.UUID
    run_id: uuid.UUID
    agent_id: str
    step: int
    real_timestamp: dt.datetime | None
    content: str
    importance: float | None
    tags: list[str]
    related_agent_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """The simulation's shape: content, timestamp (the step), importance, tags, related_agent_id."""
        return {
            "content": self.content,
            "timestamp": self.step,
            "importance": self.importance,
            "tags": list(self.tags),
            "related_agent_id": self.related_agent_id,
        }


@dataclass(frozen=True, slots=True)
class RetrievedMemory(Memory):
    """A memory with its retrieval scores (each in [0, 1]) and their weighted sum."""

    recency: float
    importance_score: float
    relevance: float
    score: float

    def as_dict(self) -> dict[str, Any]:
        """``Memory.as_dict`` plus ``memory_id``, ``score``, ``recency`` and ``relevance``."""
        return {**Memory.as_dict(self), "memory_id": str(self.memory_id), "score": self.score,
                "recency": self.recency, "relevance": self.relevance}


@dataclass(frozen=True, slots=True)
class RetrievalWeights:
    """Weights of the three scores; the generative-agents paper weighs them equally."""

    recency: float = 1.0
    importance: float = 1.0
    relevance: float = 1.0

    def __post_init__(self) -> None:
        for name in ("recency", "importance", "relevance"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not 0 <= value <= MAX_WEIGHT):
                raise ValueError(f"RetrievalWeights.{name} must be a number from 0 to {MAX_WEIGHT:g} (got {value!r})")


def _memory(row: tuple[Any, ...]) -> Memory:
    return Memory(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7] or [], row[8])


def _retrieved(row: tuple[Any, ...]) -> RetrievedMemory:
    return RetrievedMemory(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7] or [], row[8],
                           row[9], row[10], row[11], row[12])


def _check_count(name: str, value: Any) -> int:
    """`value` as an int (numpy integers too); ValueError for anything else, bools included."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int (got {value!r})") from None


#: PostgreSQL's int4 range (``step_timestamp``); counts above its top are clamped to it.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1


def check_limit(name: str, value: Any) -> int:
    """A count as an int, clamped to int4 (more rows than that cannot exist per agent)."""
    return min(_check_count(name, value), INT4_MAX)


def _check_step(value: Any) -> int:
    step = _check_count("current_step", value)
    if not INT4_MIN <= step <= INT4_MAX:
        raise ValueError(f"current_step must fit a step (int4, {INT4_MIN}..{INT4_MAX}; got {value!r})")
    return step


def check_agent_id(agent_id: Any) -> str:
    """`agent_id` as stored: text as is; enum members, numpy scalars, ints, floats, UUIDs as their
    text (as the handler's save path converts them); ValueError for anything else."""
    if isinstance(agent_id, enum.Enum):
        agent_id = agent_id.value
    if type(agent_id).__module__ == "numpy" and getattr(agent_id, "ndim", None) == 0:
        agent_id = agent_id.item()
    if isinstance(agent_id, str):
        return str.__str__(agent_id)
    if isinstance(agent_id, (int, float, uuid.UUID)) and not isinstance(agent_id, bool):
        return str(agent_id)
    raise ValueError(f"agent_id must be text (got {agent_id!r})")


def _scope(run_id: uuid.UUID | str | None) -> tuple[str, uuid.UUID | None]:
    if run_id is None:
        return _ALL_RUNS_SCOPE, None
    if isinstance(run_id, uuid.UUID):
        return _RUN_SCOPE, run_id
    try:
        return _RUN_SCOPE, uuid.UUID(str(run_id))
    except ValueError:
        raise ValueError(f"run_id must be a UUID (got {run_id!r})") from None


def check_timeout(timeout: Any) -> float:
    """`timeout` in seconds: a number >= 0, or inf for no bound; ValueError for NaN, bools, text, None."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 (inf: no bound; got {timeout!r})")
    return float(timeout)


def behind(positions: Mapping[tuple[str, int], int],
           stored: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int | None]:
    """Of `positions`, those `stored` offsets have not reached: by how many records (None: none stored)."""
    out: dict[tuple[str, int], int | None] = {}
    for tp, needed in positions.items():
        have = stored.get(tp)
        if have is None:
            out[tp] = None
        elif have < needed:
            out[tp] = needed - have
    return out


class MemoryReader:
    """Reads agent memories from PostgreSQL through a few reused connections; thread-safe.

    `database_url`: a libpq URL (``postgresql+driver://`` and ``postgres://`` read as
    ``postgresql://``; a role with SELECT on ``agent_memories`` and
    ``ingest_offsets``, e.g. one granted ``society_reader``). A connection
    attempt waits at most `connect_timeout`; after a failed one, calls fail at
    once with ReadUnavailableError for `retry_after` seconds (doubling while the
    outage lasts), so an unreachable database costs the connect timeout once,
    not on every call. Each query may run at most `statement_timeout` seconds.
    `loader_group` is the workers' consumer group, whose stored offsets
    ``wait_until_landed`` reads. Invalid arguments raise ValueError naming them;
    counts above int4 are clamped; agent ids are converted to text as the save path does.
    """

    def __init__(self, database_url: str, *, loader_group: str = DEFAULT_LOADER_GROUP, **pool: Any) -> None:
        """`pool`: ``size`` (4), ``connect_timeout`` (5 s), ``statement_timeout`` (10 s) and
        ``retry_after`` (5 s) of the ``producers._pg_pool.ConnectionPool``."""
        self.loader_group = loader_group
        self._pool = ConnectionPool(database_url, **pool)

    def recent_memories(self, agent_id: str, count: int, *, run_id: uuid.UUID | str | None) -> list[Memory]:
        """At most `count` memories of `agent_id`, newest step first (a step's newest first, ties by memory_id).

        `run_id`: the run whose memories to read; None reads every run's (steps
        then compare across runs, as the simulation's own handler does).
        """
        count = check_limit("count", count)
        agent_id = check_agent_id(agent_id)
        scope, run = _scope(run_id)
        if count <= 0:
            return []
        params = {"run": run, "agent": agent_id, "count": count}
        rows = self._pool.run(lambda conn: conn.execute(_RECENT_SQL.format(scope=scope), params).fetchall())
        return [_memory(r) for r in rows]

    def retrieve_memories(
        self,
        agent_id: str,
        query: str,
        k: int = 10,
        *,
        run_id: uuid.UUID | str | None,
        current_step: int | None = None,
        weights: RetrievalWeights = RetrievalWeights(),
        decay: float = DEFAULT_DECAY,
        window: int = DEFAULT_WINDOW,
    ) -> list[RetrievedMemory]:
        """The `k` best memories of `agent_id` for `query`, best first (see the module doc for the score).

        `query` is plain text (its words count, in any order);
        `current_step` anchors recency (default: the newest candidate's step);
        `decay` in (0, 1]; `window` bounds the candidates (see the module doc).
        """
        k = check_limit("k", k)
        agent_id = check_agent_id(agent_id)
        if (window := check_limit("window", window)) < 1:
            raise ValueError(f"window must be at least 1 (got {window})")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1] (got {decay!r})")
        if not isinstance(weights, RetrievalWeights):
            raise ValueError(f"weights must be a RetrievalWeights (got {weights!r})")
        if not isinstance(query, str):
            raise ValueError(f"query must be a str (got {query!r})")
        now = None if current_step is None else _check_step(current_step)
        scope, run = _scope(run_id)
        if k <= 0:
            return []
        params = {
            "run": run, "agent": agent_id, "query": query, "k": k, "window": window, "decay": float(decay),
            "now": now,
            "w_recency": float(weights.recency), "w_importance": float(weights.importance),
            "w_relevance": float(weights.relevance),
        }
        sql = _RETRIEVE_SQL.format(scope=scope)
        rows = self._pool.run(lambda conn: conn.execute(sql, params).fetchall())
        return [_retrieved(r) for r in rows]

    def behind(self, positions: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int | None]:
        """Of `positions` ((topic, partition) -> the offset after the last record to wait for),
        those the loader group has not loaded yet: how many records short, or None when it
        stored no offset there at all."""
        if not positions:
            return {}
        return behind(positions, self.stored_offsets(list(positions)))

    def stored_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The loader group's stored next offset of each of `partitions` that has one (one brief query)."""
        if not partitions:
            return {}
        topics = [t for t, _ in partitions]
        numbers = [p for _, p in partitions]
        rows = self._pool.run(
            lambda conn: conn.execute(_OFFSETS_SQL, (self.loader_group, topics, numbers)).fetchall()
        )
        return {(t, p): o for t, p, o in rows}

    def wait_until_landed(
        self, positions: Mapping[tuple[str, int], int], timeout: float = 30.0, *, deadline: float | None = None
    ) -> None:
        """Return once the workers stored, with the rows, offsets at or past `positions`.

        `positions` is what ``SocietyProducer.sync()`` returns. The workers store
        a partition's next offset in the same transaction as its rows, so when it
        passes a record's offset, that record is loaded (or dead-lettered). Raises
        NotLandedError after `timeout` seconds, naming each partition behind and by
        how much; ReadError when the database cannot be read. `deadline` (a
        ``time.monotonic()`` value) ends the wait earlier, when part of `timeout`
        was spent already (flushing). `timeout` inf: no bound; NaN, negative or not a
        number: ValueError.
        """
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout if deadline is None else deadline
        while True:
            behind = self.behind(positions)
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise NotLandedError(self._not_landed(behind, timeout), behind)
            time.sleep(min(LANDED_POLL_S, max(0.0, deadline - time.monotonic())))

    def _not_landed(self, behind: Mapping[tuple[str, int], int | None], timeout: float) -> str:
        parts = [
            f"{t}[{p}]: " + ("no offset stored yet" if n is None else f"{n} record(s) behind")
            for (t, p), n in sorted(behind.items())
        ]
        return (f"records not loaded after {timeout:g}s by consumer group {self.loader_group!r} "
                f"(are its workers running?): " + "; ".join(parts))

    def close(self) -> None:
        """Close the connections."""
        self._pool.close()

    def __enter__(self) -> MemoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "DEFAULT_DECAY",
    "DEFAULT_LOADER_GROUP",
    "DEFAULT_WINDOW",
    "Memory",
    "MemoryReader",
    "RetrievalWeights",
    "RetrievedMemory",
]
