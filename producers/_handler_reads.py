"""The drop-in handler's read side: recent memories, ranked retrieval, read-your-writes.

Mixed into ``KafkaDatabaseHandler``. Reads go to PostgreSQL through a
``producers.reads.MemoryReader`` made on first use, in worker threads, so the
event loop never waits for the database. Like the simulation's own handler,
the read coroutines never raise into the simulation: when no database is
configured, psycopg is missing, PostgreSQL cannot be reached (or lacks the
tables) or an argument is invalid they return an empty list and log a warning:
at most one per kind of problem a minute, with a count of those suppressed.
Waiting for landed records polls from the event loop (``asyncio.sleep``
between brief queries in the reader's own threads), so it is cancellable and
holds no thread while it waits; concurrent waiters share one offsets query.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import uuid
from typing import Any

from producers.errors import DeliveryError, NotLandedError, ProducerError, ReadError, ReadUnavailableError
from producers.reads import (
    DEFAULT_DECAY,
    DEFAULT_LOADER_GROUP,
    DEFAULT_WINDOW,
    LANDED_POLL_S,
    MemoryReader,
    RetrievalWeights,
    behind,
    check_agent_id,
    check_limit,
    check_timeout,
)

log = logging.getLogger("producers.handler")

#: Environment variables naming the database to read from, first match wins (after the arguments).
READ_URL_ENV = ("SOCIETY_READ_DATABASE_URL", "DATABASE_URL")
#: The workers' consumer group, as the CLI reads it.
GROUP_ENV = "SOCIETY_CONSUMER_GROUP"
#: One kind of failure is logged as a warning at most this often; in between, at debug level.
WARN_EVERY_S = 60.0
#: Threads of the reads' own executor (the default executor stays free for the simulation).
READ_THREADS = 4
#: Default bound of ``wait_until_landed`` and of the reads' ``wait_for_landed=True``.
LANDED_TIMEOUT_S = 30.0
#: The longest flush of ``wait_until_landed`` (its `timeout` may be inf).
MAX_FLUSH_S = 86400.0


class MemoryReads:
    """Read coroutines of ``KafkaDatabaseHandler`` (see the module doc)."""

    producer: Any
    _current_run_id: str | None

    def _init_reads(self, read_url: str | None, loader_group: str | None, reader: MemoryReader | None) -> None:
        self._read_url = read_url
        self._loader_group = loader_group or os.environ.get(GROUP_ENV) or DEFAULT_LOADER_GROUP
        self._reader = reader
        self._warned: dict[str, tuple[float, int]] = {}  # kind -> (last warning, suppressed since)
        self._read_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._offsets_query: tuple[frozenset[tuple[str, int]], asyncio.Future[Any]] | None = None
        #: How long the reads' ``wait_for_landed=True`` waits at most.
        self.landed_timeout = LANDED_TIMEOUT_S

    def _memory_reader(self) -> MemoryReader:
        if self._reader is None:
            if not self._read_url:
                raise ReadError(
                    "no database to read memories from: pass read_database_url= (or a postgresql:// db_url), "
                    f"or set {' or '.join(READ_URL_ENV)}"
                )
            self._reader = MemoryReader(self._read_url, loader_group=self._loader_group)
        return self._reader

    def _run_scope(self, run_id: Any, all_runs: bool) -> uuid.UUID | str | None:
        if all_runs:
            return None
        return run_id if run_id is not None else self._current_run_id

    def _warn(self, what: str, e: BaseException, outcome: str = "returning no memories") -> None:
        """Warn about `e` once per kind of problem (its type) per WARN_EVERY_S; debug in between."""
        kind = type(e).__name__ if outcome == "returning no memories" else f"{type(e).__name__}/{outcome}"
        message = f"{what}: {e}; {outcome}"
        at, suppressed = self._warned.get(kind, (None, 0))
        now = time.monotonic()
        if at is None or now - at >= WARN_EVERY_S:
            self._warned[kind] = (now, 0)
            more = f" ({suppressed} similar warning(s) suppressed since the last)" if suppressed else ""
            log.warning("%s%s", message, more)
        else:
            self._warned[kind] = (at, suppressed + 1)
            log.debug("%s", message)

    def _recovered(self) -> None:
        """A read succeeded: the next failure is a new outage, warned about at once."""
        if self._warned:
            self._warned.clear()

    async def _off_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the reads' own threads (a blocking query, never a sleep)."""
        if self._read_pool is None:
            self._read_pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="society-read")
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, lambda: fn(*args, **kwargs))

    async def get_recent_agent_memories(
        self,
        agent_id: str,
        count: int,
        *,
        run_id: uuid.UUID | str | None = None,
        all_runs: bool = False,
        wait_for_landed: bool = False,
    ) -> list[dict[str, Any]]:
        """At most `count` memories of `agent_id`, newest step first, as the simulation's handler returns them:
        dicts with ``content``, ``timestamp`` (the step), ``importance``, ``tags`` (a list) and ``related_agent_id``.

        Scope: the current run (``start_simulation_run``), or `run_id`; every run with
        ``all_runs=True`` or before a run is started (as the simulation's own handler reads).
        ``wait_for_landed=True`` first waits (up to ``landed_timeout``, 30 s) until everything
        recorded so far is loaded; if that times out, a warning is logged and what is
        loaded is returned. Never raises (unavailable database, invalid argument): logs a warning and returns [].
        """
        try:
            scope = self._run_scope(run_id, all_runs)
            reader = self._memory_reader()
            check_agent_id(agent_id)  # before any wait
            check_limit("count", count)
            if wait_for_landed:
                await self._wait_or_warn()
            memories = await self._off_loop(reader.recent_memories, agent_id, count, run_id=scope)
        except (ReadError, ValueError) as e:
            self._warn(f"get_recent_agent_memories({agent_id!r})", e)
            return []
        self._recovered()
        return [m.as_dict() for m in memories]

    async def retrieve_memories(
        self,
        agent_id: str,
        query: str,
        k: int = 10,
        *,
        run_id: uuid.UUID | str | None = None,
        all_runs: bool = False,
        current_step: int | None = None,
        weights: RetrievalWeights | None = None,
        decay: float = DEFAULT_DECAY,
        window: int = DEFAULT_WINDOW,
        wait_for_landed: bool = False,
    ) -> list[dict[str, Any]]:
        """The `k` memories of `agent_id` best for `query` by recency, importance and relevance, best first.

        Dicts as ``get_recent_agent_memories`` returns them, plus ``memory_id``, ``score``,
        ``recency`` and ``relevance``; scope and ``wait_for_landed`` as there. The score and
        its arguments are described in ``producers.reads``. Never raises: an invalid
        argument or an unavailable database logs a warning and returns [].
        """
        try:
            scope = self._run_scope(run_id, all_runs)
            weights = weights if weights is not None else RetrievalWeights()
            reader = self._memory_reader()
            check_agent_id(agent_id)  # before any wait
            check_limit("k", k)
            if wait_for_landed:
                await self._wait_or_warn()
            memories = await self._off_loop(
                reader.retrieve_memories, agent_id, query, k, run_id=scope, current_step=current_step,
                weights=weights, decay=decay, window=window,
            )
        except (ReadError, ValueError) as e:
            self._warn(f"retrieve_memories({agent_id!r})", e)
            return []
        self._recovered()
        return [m.as_dict() for m in memories]

    async def wait_until_landed(self, timeout: float = LANDED_TIMEOUT_S) -> None:
        """Wait until everything recorded so far is delivered and loaded into PostgreSQL.

        Flushes the producer (off the event loop), then watches the workers' stored
        offsets (consumer group: ``loader_group=``, ``SOCIETY_CONSUMER_GROUP``, else
        ``society-ingest``) from the event loop: cancelling the wait stops it. Raises
        ValueError for a `timeout` that is not a number >= 0 (NaN included; inf waits
        without bound), NotLandedError after `timeout` seconds naming the partitions
        behind (or the records still on their way to Kafka), DeliveryError if Kafka
        refused or failed records, ReadError when the database cannot be read.
        """
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        reader = self._memory_reader()
        try:
            positions = await asyncio.to_thread(self.producer.sync, min(timeout, MAX_FLUSH_S))
        except DeliveryError as e:
            if e.failures:
                raise
            # Nothing failed: the records are still on their way to Kafka when the time is up.
            raise NotLandedError(f"{e.pending} record(s) not yet delivered to Kafka after {timeout:g}s "
                                 "(is the broker reachable?)", {}) from e
        while positions:
            late = behind(positions, await self._stored_offsets(reader, positions))
            if not late:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotLandedError(reader._not_landed(late, timeout), late)
            await asyncio.sleep(min(LANDED_POLL_S, left))

    async def _stored_offsets(self, reader: MemoryReader, positions: Any) -> dict[tuple[str, int], int]:
        """The stored offsets of `positions`' partitions; concurrent waiters share one in-flight query
        (offsets only grow, so an answer begun earlier is still a valid lower bound)."""
        keys = frozenset(positions)
        loop = asyncio.get_running_loop()
        shared = self._offsets_query
        if shared is None or not keys <= shared[0] or shared[1].done() or shared[1].get_loop() is not loop:
            future = asyncio.ensure_future(self._off_loop(reader.stored_offsets, sorted(keys)))
            shared = self._offsets_query = (keys, future)
            future.add_done_callback(self._offsets_query_done)
        return await asyncio.shield(shared[1])

    def _offsets_query_done(self, future: asyncio.Future[Any]) -> None:
        if self._offsets_query is not None and self._offsets_query[1] is future:
            self._offsets_query = None
        if not future.cancelled():
            future.exception()  # retrieved: every waiter may have been cancelled

    async def _wait_or_warn(self) -> None:
        try:
            await self.wait_until_landed(self.landed_timeout)
        except (ReadUnavailableError, ProducerError, NotLandedError) as e:
            self._warn("wait_for_landed", e, "reading what has landed")

    def _close_reads(self) -> None:
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=False)
            self._read_pool = None
        if self._reader is not None:
            self._reader.close()
