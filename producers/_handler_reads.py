"""The drop-in handler's read side: recent memories, ranked retrieval, read-your-writes.

Mixed into ``KafkaDatabaseHandler``. Reads go to PostgreSQL through a
``producers.reads.MemoryReader`` made on first use, in worker threads, so the
event loop never waits for the database. Like the simulation's own handler,
the read coroutines never raise into the simulation: when no database is
configured, psycopg is missing or PostgreSQL cannot be reached they return an
empty list and log a warning (once per outage, not once per call).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

from producers.errors import NotLandedError, ProducerError, ReadError, ReadUnavailableError
from producers.reads import DEFAULT_DECAY, DEFAULT_LOADER_GROUP, DEFAULT_WINDOW, MemoryReader, RetrievalWeights

log = logging.getLogger("producers.handler")

#: Environment variables naming the database to read from, first match wins (after the arguments).
READ_URL_ENV = ("SOCIETY_READ_DATABASE_URL", "DATABASE_URL")
#: The workers' consumer group, as the CLI reads it.
GROUP_ENV = "SOCIETY_CONSUMER_GROUP"
#: The same failure is logged as a warning at most this often; in between, at debug level.
WARN_EVERY_S = 30.0
#: Default bound of ``wait_until_landed`` and of the reads' ``wait_for_landed=True``.
LANDED_TIMEOUT_S = 30.0


class MemoryReads:
    """Read coroutines of ``KafkaDatabaseHandler`` (see the module doc)."""

    producer: Any
    _current_run_id: str | None

    def _init_reads(self, read_url: str | None, loader_group: str | None, reader: MemoryReader | None) -> None:
        self._read_url = read_url
        self._loader_group = loader_group or os.environ.get(GROUP_ENV) or DEFAULT_LOADER_GROUP
        self._reader = reader
        self._last_warning: tuple[str, float] = ("", 0.0)
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
        message = f"{what}: {e}; {outcome}"
        last, at = self._last_warning
        now = time.monotonic()
        if message != last or now - at >= WARN_EVERY_S:
            self._last_warning = (message, now)
            log.warning("%s", message)
        else:
            log.debug("%s", message)

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
        loaded is returned. Never raises for an unavailable database: logs a warning and returns [].
        """
        scope = self._run_scope(run_id, all_runs)
        try:
            reader = self._memory_reader()
            if wait_for_landed:
                await self._wait_or_warn()
            memories = await asyncio.to_thread(reader.recent_memories, agent_id, count, run_id=scope)
        except ReadError as e:
            self._warn(f"get_recent_agent_memories({agent_id!r})", e)
            return []
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
        its arguments are described in ``producers.reads``. Invalid arguments raise
        ValueError; an unavailable database logs a warning and returns [].
        """
        scope = self._run_scope(run_id, all_runs)
        weights = weights if weights is not None else RetrievalWeights()
        try:
            reader = self._memory_reader()
            if wait_for_landed:
                await self._wait_or_warn()
            memories = await asyncio.to_thread(
                reader.retrieve_memories, agent_id, query, k, run_id=scope, current_step=current_step,
                weights=weights, decay=decay, window=window,
            )
        except ReadError as e:
            self._warn(f"retrieve_memories({agent_id!r})", e)
            return []
        return [m.as_dict() for m in memories]

    async def wait_until_landed(self, timeout: float = LANDED_TIMEOUT_S) -> None:
        """Wait until everything recorded so far is delivered and loaded into PostgreSQL.

        Flushes the producer (off the event loop), then watches the workers' stored
        offsets (consumer group: ``loader_group=``, ``SOCIETY_CONSUMER_GROUP``, else
        ``society-ingest``). Raises NotLandedError after `timeout` seconds naming the
        partitions behind, DeliveryError if Kafka did not take the records, ReadError
        when the database cannot be read.
        """
        deadline = time.monotonic() + timeout
        reader = self._memory_reader()
        positions = await asyncio.to_thread(self.producer.sync, timeout)
        await asyncio.to_thread(reader.wait_until_landed, positions, timeout, deadline=deadline)

    async def _wait_or_warn(self) -> None:
        try:
            await self.wait_until_landed(self.landed_timeout)
        except (ReadUnavailableError, ProducerError, NotLandedError) as e:
            self._warn("wait_for_landed", e, "reading what has landed")

    def _close_reads(self) -> None:
        if self._reader is not None:
            self._reader.close()
