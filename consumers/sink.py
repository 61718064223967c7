"""PostgreSQL sink: one transaction per batch, parents first, offsets with the rows.

Commit order of ``PostgresSink.write`` (the contract that makes loading
exactly-once):

1. create stub parents (runs, agents) that children reference;
2. load runs and agents with a guarded upsert (through a staging table), then
   the child tables with plain binary COPY; only when a key already exists
   (a replay, a re-run step) does a table go through staging +
   ``INSERT … ON CONFLICT DO NOTHING`` for a while, where a key that exists
   with different identifying columns is kept in ``ingest_conflicts``. A chunk
   that raises a data error is bisected down to the bad rows, which become
   dead letters while the rest loads;
3. store each partition's next offset, compare-and-set against the offset
   this worker read at assignment (another worker's commit fences us out);
4. publish dead letters and wait for the broker to acknowledge them;
5. COMMIT. Only then may the caller mirror the offsets to Kafka.
"""

from __future__ import annotations

import json
import struct
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consumers._deps import psycopg
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.types.json import set_json_dumps
from consumers import copy_rows
from consumers.batch import Batch, DeadLetter, TableRows, TopicPartition, source_of
from consumers.bounded_set import BoundedSet
from consumers.errors import FencedError, TransientError
from consumers.pg_errors import DATA_ERRORS, translate
from consumers.table_specs import RUN_COLUMN, SPECS, TableSpec
from producers import tables

log = logging.getLogger(__name__)

errors = psycopg.errors

#: Give up connecting after 10 s; TCP keepalives notice a server that vanished without
#: closing the connection (a statement would otherwise wait on it for hours).
CONNECT_OPTIONS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                   "keepalives_interval": 10, "keepalives_count": 3}

#: How long the start-up table check waits for a lock (then retries, so a stop can end it).
CHECK_LOCK_TIMEOUT_MS = 5_000

PublishDead = Callable[[list[DeadLetter]], None]

#: After a chunk hit an existing key, load this many chunks of that table through
#: staging + ON CONFLICT before trying plain COPY again (a replay rarely ends at once).
FAST_PATH_BACKOFF_CHUNKS = 20

#: Runs and (run, agent) pairs the sink remembers as existing, each. A run of 2,500 agents
#: needs 2,500 pairs: this holds twenty such runs (a few MB) and stops a worker that runs
#: for months from growing without end. Forgetting one only costs an idempotent stub insert.
MAX_KNOWN_PARENTS = 50_000


@dataclass(slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    conflicts: int = 0
    #: `conflicts` per table.
    table_conflicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    dead: list[DeadLetter] = field(default_factory=list)
    #: How many of `dead` the batch held before loading (decode and validation failures);
    #: the rest are rows PostgreSQL rejected.
    held_dead: int = 0


def _qcols(names: Iterable[str]) -> str:
    return ", ".join(names)


def _insert_sql(spec: TableSpec) -> str:
    cols = _qcols(spec.column_names)
    select = _qcols(c.select_expr for c in spec.columns)
    head = f"INSERT INTO {spec.name} AS t ({cols}) SELECT {select} FROM {spec.stage_table}"
    if not spec.upsert:
        return f"{head} ON CONFLICT ({_qcols(spec.key)}) DO NOTHING"
    updates = _qcols(f"{c} = EXCLUDED.{c}" for c in spec.column_names if c not in spec.key)
    # Guarded upsert: an older state never overwrites a newer one, the same state is not written
    # again (a duplicate), stubs (NULL) always lose.
    return (
        f"{head} ON CONFLICT ({_qcols(spec.key)}) DO UPDATE SET {updates} "
        f"WHERE t.updated_at IS NULL OR t.updated_at < EXCLUDED.updated_at"
    )


def _conflict_sql(spec: TableSpec) -> str:
    """Staged rows whose key exists with different identifying columns (bookkeeping ignored)."""
    join = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    identity = [c for c in spec.columns if c.name in spec.identity]
    staged = _qcols(f"s.{c.select_expr}" for c in identity)
    stored = _qcols(f"t.{c.name}" for c in identity)
    key = " || '/' || ".join(f"s.{k}::text" for k in spec.key)
    return (
        f"SELECT s._seq, {key}, to_jsonb(s) - '_seq' FROM {spec.stage_table} s "
        f"JOIN {spec.name} t ON {join} WHERE ({staged}) IS DISTINCT FROM ({stored})"
    )


_STUB_RUNS = (
    "INSERT INTO simulation_runs (run_id) SELECT r FROM unnest(%s::uuid[]) AS u(r) "
    "ORDER BY r ON CONFLICT DO NOTHING"
)
_STUB_AGENTS = (
    "INSERT INTO agents (creation_run_id, agent_id_str) "
    "SELECT r, a FROM unnest(%s::uuid[], %s::text[]) AS u(r, a) ORDER BY r, a ON CONFLICT DO NOTHING"
)
_STORE_OFFSET = (
    "INSERT INTO ingest_offsets (consumer_group, topic, kafka_partition, next_offset) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) "
    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = NOW() "
    "WHERE ingest_offsets.next_offset = %s RETURNING 1"
)
_HEARTBEAT = (
    "INSERT INTO ingest_workers AS w (worker_id, consumer_group, batches, rows_loaded, dead_lettered, retries, last_error) "
    "VALUES (%s, %s, 1, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET "
    "consumer_group = EXCLUDED.consumer_group, last_commit_at = NOW(), batches = w.batches + 1, "
    "rows_loaded = w.rows_loaded + EXCLUDED.rows_loaded, dead_lettered = w.dead_lettered + EXCLUDED.dead_lettered, "
    "retries = EXCLUDED.retries, last_error = EXCLUDED.last_error"
)
#: A conflict already kept (the same incoming record for the same key) is not kept again: replays
#: would otherwise ask a person to judge it once per replay.
_RECORD_CONFLICT = (
    "INSERT INTO ingest_conflicts (table_name, record_key, topic, kafka_partition, kafka_offset, incoming) "
    "SELECT %(table)s, %(key)s, %(topic)s, %(partition)s, %(offset)s, %(incoming)s WHERE NOT EXISTS ("
    "SELECT 1 FROM ingest_conflicts WHERE table_name = %(table)s AND record_key = %(key)s "
    "AND incoming = %(incoming)s::jsonb)"
)


def _latest_per_key(spec: TableSpec, rows: TableRows) -> TableRows:
    """Keep one state per key: the newest updated_at (the later offset on ties)."""
    key_idx = [spec.column_names.index(k) for k in spec.key]
    ts_idx = spec.column_names.index("updated_at")
    best: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(rows.rows):
        k = tuple(row[j] for j in key_idx)
        j = best.get(k)
        if j is None or rows.rows[j][ts_idx] <= row[ts_idx]:
            best[k] = i
    keep = sorted(best.values())
    return TableRows([rows.rows[i] for i in keep], [rows.sources[i] for i in keep], [rows.parents[i] for i in keep])


def _as_copy(table: str, rows: TableRows) -> TableRows:
    """A fact table's rows all as COPY tuples with parent keys (tuple rows encoded here)."""
    if None not in rows.parents:
        return rows
    encode, key = copy_rows.ENCODE_ROW[table], copy_rows.PARENT_KEY[table]
    return TableRows(
        [r if p is not None else encode(r) for r, p in zip(rows.rows, rows.parents, strict=True)],
        rows.sources,
        [p if p is not None else key(r) for r, p in zip(rows.rows, rows.parents, strict=True)],
    )


class _TextArrayBinaryDumper(Dumper):
    """Binary text[] for a list of str, several times faster than psycopg's generic list dumper."""

    format = pq.Format.BINARY
    _text_oid = 25

    def dump(self, obj: list[str | None]) -> bytes:
        if not obj:
            return _EMPTY_ARRAY.pack(0, 0, self._text_oid)
        parts = [b""]
        has_null = 0
        for item in obj:
            if item is None:
                has_null = 1
                parts.append(_INT4.pack(-1))
            else:
                data = item.encode("utf-8")
                parts.append(_INT4.pack(len(data)))
                parts.append(data)
        parts[0] = _ARRAY_HEADER.pack(1, has_null, self._text_oid, len(obj), 1)
        return b"".join(parts)


_INT4 = struct.Struct("!i")
_EMPTY_ARRAY = struct.Struct("!iiI")
_ARRAY_HEADER = struct.Struct("!iiIii")


def _as_json_text(obj: str) -> str:
    return obj


class _TextList(list):  # type: ignore[type-arg]
    """Marker type for the text[] dumper (registered by oid; rows carry plain lists)."""


def configure_adapters(context: Any) -> None:
    """The dumpers the sink loads row tuples with, on a connection (or any psycopg adapt context)."""
    # jsonb values are JSON text the models already validated: dump them as they are.
    set_json_dumps(_as_json_text, context=context)
    text_array_oid = context.adapters.types["text"].array_oid
    context.adapters.register_dumper(
        _TextList, type("TextArrayDumper", (_TextArrayBinaryDumper,), {"oid": text_array_oid})
    )


@dataclass(slots=True)
class _Parents:
    #: 16-byte run ids, and run id + agent id UTF-8 (``copy_rows.parent_key``).
    runs: set[bytes]
    agents: set[bytes]


class PostgresSink:
    """Writes batches into PostgreSQL over one connection (reconnects on demand)."""

    def __init__(self, database_url: str, group_id: str, worker_id: str = "", health: Any = None) -> None:
        self._url = database_url
        self._group = group_id
        self._worker_id = worker_id
        #: Object with ``retries`` and ``last_error`` (the worker's stats), reported with each batch.
        self._health = health
        self._conn: Any = None
        self._insert = {t: _insert_sql(s) for t, s in SPECS.items()}
        self._conflicts = {t: _conflict_sql(s) for t, s in SPECS.items() if not s.upsert}
        # Parents known to exist, so most batches skip their stub inserts.
        self._known_runs = BoundedSet(MAX_KNOWN_PARENTS)
        self._known_agents = BoundedSet(MAX_KNOWN_PARENTS)
        self._stage = {t: copy_rows.staged_encoder(SPECS[t]) for t in copy_rows.FACT_TABLES}
        # Chunks per table to load through staging before trying plain COPY again.
        self._skip_fast_path: dict[str, int] = {}

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """(Re)connect and create the staging tables.

        Raises TransientError when PostgreSQL is unreachable, ConfigurationError when
        it refuses us for good (password, database, privileges).
        """
        self.close()
        conn = None
        try:
            conn = psycopg.connect(self._url, autocommit=True, **CONNECT_OPTIONS)
            configure_adapters(conn)
            for spec in SPECS.values():
                cols = ", ".join(f"{c.name} {c.copy_type}" for c in spec.columns)
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {spec.stage_table} ({cols}, _seq int4)")
        except psycopg.Error as e:
            if conn is not None:
                conn.close()  # connected, but cannot make its staging tables (e.g. no TEMPORARY)
            raise translate(e, self._url, "cannot connect") from e
        self._conn = conn

    def check_schema(self) -> None:
        """Fail at once, with a hint, when a table or column the worker writes is missing."""
        conn = self._connection()
        try:
            with conn.transaction():
                # A table locked by a migration must not hold the worker's start (and its stop) forever:
                # a lock timeout is transient, so the check is retried and a stop request ends it.
                conn.execute(f"SET LOCAL lock_timeout = '{CHECK_LOCK_TIMEOUT_MS}ms'")
                for spec in SPECS.values():
                    conn.execute(f"SELECT {_qcols(spec.column_names)} FROM {spec.name} LIMIT 0")
                for table in ("ingest_offsets", "ingest_workers", "ingest_conflicts"):
                    conn.execute(f"SELECT * FROM {table} LIMIT 0")
        except psycopg.Error as e:
            self.close()
            raise translate(e, self._url, "checking the tables") from e

    def close(self) -> None:
        """Close the connection (the next write reconnects)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self.connect()
        return self._conn

    # -- offsets ------------------------------------------------------------
    def load_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets of `partitions` (absent: never committed)."""
        wanted = list(partitions)
        try:
            rows = self._connection().execute(
                "SELECT topic, kafka_partition, next_offset FROM ingest_offsets "
                "WHERE consumer_group = %s AND (topic, kafka_partition) IN "
                "(SELECT * FROM unnest(%s::text[], %s::int[]))",
                (self._group, [t for t, _ in wanted], [p for _, p in wanted]),
            ).fetchall()
        except psycopg.Error as e:
            self.close()
            raise translate(e, self._url, "reading stored offsets") from e
        return {(t, p): o for t, p, o in rows}

    def forget_offsets(self) -> int:
        """Delete this group's stored offsets (a replay starting over); return how many there were."""
        try:
            cur = self._connection().execute("DELETE FROM ingest_offsets WHERE consumer_group = %s", (self._group,))
        except psycopg.Error as e:
            self.close()
            raise translate(e, self._url, "clearing stored offsets") from e
        return cur.rowcount

    # -- writing ------------------------------------------------------------
    def write(
        self,
        batch: Batch,
        expected: dict[TopicPartition, int | None],
        publish_dead: PublishDead,
    ) -> WriteResult:
        """Load `batch` and store its offsets in one transaction (see module doc)."""
        try:
            return self._write(batch, expected, publish_dead)
        except psycopg.Error as e:
            # Data errors were isolated row by row in _load: what reaches here is about
            # the connection or the deployment, never one record.
            self.close()
            raise translate(e, self._url, "writing a batch") from e

    def _write(
        self, batch: Batch, expected: dict[TopicPartition, int | None], publish_dead: PublishDead
    ) -> WriteResult:
        conn = self._connection()
        result = WriteResult(dead=list(batch.dead), held_dead=len(batch.dead))
        created = _Parents(set(), set())
        with conn.transaction():
            with conn.cursor() as cur:
                for table in tables.TABLES:
                    rows = batch.tables[table]
                    if not rows.rows:
                        continue
                    spec = SPECS[table]
                    if spec.upsert:
                        states = len(rows.rows)
                        rows = _latest_per_key(spec, rows)
                        result.duplicates[table] += states - len(rows.rows)  # superseded in the batch
                    else:
                        rows = _as_copy(table, rows)
                    self._load(cur, spec, rows, result, created)
                self._store_offsets(cur, batch, expected)
                self._heartbeat(cur, result)
            if result.dead:
                publish_dead(result.dead)
        self._known_runs.update(created.runs)
        self._known_agents.update(created.agents)
        return result

    def _ensure_parents(self, cur: Any, spec: TableSpec, rows: TableRows) -> _Parents:
        """Insert stub parents that `rows` reference and that may not exist yet."""
        run_col = RUN_COLUMN.get(spec.name)
        if run_col is None:
            return _Parents(set(), set())
        if spec.upsert:  # row tuples
            idx = spec.column_names.index(run_col)
            keys = {r[idx].bytes for r in rows.rows}
        else:
            keys = set(rows.parents)
        agents: set[bytes] = set()
        if spec.agent_column is not None:
            agents = self._known_agents.missing(keys)
            keys = {k[:16] for k in keys}
        runs = self._known_runs.missing(keys)
        if runs:
            cur.execute(_STUB_RUNS, ([uuid.UUID(bytes=r) for r in sorted(runs)],))
        if agents:
            pairs = sorted(agents)  # the run's 16 bytes first: the order of (run, agent)
            cur.execute(_STUB_AGENTS, ([uuid.UUID(bytes=k[:16]) for k in pairs],
                                       [k[16:].decode("utf-8") for k in pairs]))
        return _Parents(runs, agents)

    def _load(self, cur: Any, spec: TableSpec, rows: TableRows, result: WriteResult, created: _Parents) -> None:
        """Load rows (and their stub parents) in a savepoint; on a data error, bisect down to the bad rows."""
        try:
            with cur.connection.transaction():
                parents = self._ensure_parents(cur, spec, rows)
                self._load_chunk(cur, spec, rows, result)
            created.runs |= parents.runs
            created.agents |= parents.agents
        except errors.ForeignKeyViolation as e:
            # Stubs make every parent exist, so a cached parent must have been deleted.
            self._known_runs.clear()
            self._known_agents.clear()
            raise TransientError(f"parent row vanished, retrying with stubs: {e}") from e
        except DATA_ERRORS as e:
            if len(rows.rows) == 1:
                result.dead.append(
                    DeadLetter(source_of(rows.sources[0]), spec.name, type(e).__name__, str(e).strip().splitlines()[0])
                )
                return
            for half in rows.split():
                self._load(cur, spec, half, result, created)

    def _load_chunk(self, cur: Any, spec: TableSpec, rows: TableRows, result: WriteResult) -> None:
        if not spec.upsert and self._fast_path_ok(spec.name) and self._copy_direct(cur, spec, rows.rows):
            result.inserted[spec.name] += len(rows.rows)
            return
        self._copy_staged(cur, spec, rows, result)

    def _fast_path_ok(self, table: str) -> bool:
        skip = self._skip_fast_path.get(table, 0)
        if skip:
            self._skip_fast_path[table] = skip - 1
        return not skip

    def _copy_direct(self, cur: Any, spec: TableSpec, rows: list[bytes]) -> bool:
        """Plain binary COPY of the rows' COPY tuples into the table: the normal path, since offsets
        stored with the rows mean redelivery brings no duplicates. False when a key already exists."""
        try:
            with cur.connection.transaction():
                with cur.copy(f"COPY {spec.name} ({_qcols(spec.column_names)}) FROM STDIN (FORMAT BINARY)") as copy:
                    # Raw data: psycopg sends it as it is, the stream's header and trailer included.
                    copy.write(copy_rows.SIGNATURE)
                    copy.write(b"".join(rows))
                    copy.write(copy_rows.TRAILER)
        except errors.UniqueViolation:
            # A replay, backfill or re-sent record: staging with ON CONFLICT for a while.
            self._skip_fast_path[spec.name] = FAST_PATH_BACKOFF_CHUNKS
            return False
        return True

    def _copy_staged(self, cur: Any, spec: TableSpec, table_rows: TableRows, result: WriteResult) -> None:
        rows, sources = table_rows.rows, table_rows.sources
        cols = _qcols((*spec.column_names, "_seq"))
        with cur.copy(f"COPY {spec.stage_table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            if spec.upsert:
                copy.set_types([*spec.copy_types, "int4"])
                for seq, row in enumerate(rows):
                    copy.write_row((*row, seq))
            else:
                stage = self._stage[spec.name]
                copy.write(copy_rows.SIGNATURE)
                copy.write(b"".join([stage(row, seq) for seq, row in enumerate(rows)]))
                copy.write(copy_rows.TRAILER)
        cur.execute(self._insert[spec.name])
        inserted = cur.rowcount
        divergent: list[tuple[Any, ...]] = []
        if not spec.upsert and inserted < len(rows):
            divergent = cur.execute(self._conflicts[spec.name]).fetchall()
        cur.execute(f"TRUNCATE {spec.stage_table}")
        for seq, key, incoming in divergent:
            src = source_of(sources[seq])
            cur.execute(_RECORD_CONFLICT, {"table": spec.name, "key": key, "topic": src.topic,
                                           "partition": src.partition, "offset": src.offset,
                                           "incoming": json.dumps(incoming)})
        # Counted only once the savepoint holds (a failing chunk raises before this).
        result.inserted[spec.name] += inserted
        # Facts: the rest are duplicates or conflicts. States: the rest were there already or older.
        result.duplicates[spec.name] += len(rows) - inserted - len(divergent)
        result.conflicts += len(divergent)
        result.table_conflicts[spec.name] += len(divergent)

    def _heartbeat(self, cur: Any, result: WriteResult) -> None:
        if not self._worker_id:
            return
        retries = getattr(self._health, "retries", 0)
        last_error = getattr(self._health, "last_error", None)
        cur.execute(
            _HEARTBEAT,
            (self._worker_id, self._group, sum(result.inserted.values()), len(result.dead), retries, last_error),
        )

    def _store_offsets(self, cur: Any, batch: Batch, expected: dict[TopicPartition, int | None]) -> None:
        for (topic, partition), next_offset in sorted(batch.next_offsets.items()):
            was = expected.get((topic, partition))
            cur.execute(
                _STORE_OFFSET,
                (self._group, topic, partition, next_offset, -1 if was is None else was),
            )
            if cur.fetchone() is None:
                raise FencedError(
                    f"{topic}[{partition}]: stored offset moved past {was}; another worker owns it"
                )
