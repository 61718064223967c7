"""Prometheus metrics of a worker, and what its health probes answer.

A :class:`WorkerMetrics` owns a ``CollectorRegistry`` of its own (not
prometheus-client's global one), so two workers in one process keep separate
numbers. The worker calls its hooks at batch granularity only, never per
record: when a batch is handed to the writer, when the writer has committed
one, on assignment and revocation, and once per pass of the consume loop
(which refreshes the lag every :data:`LAG_REFRESH_S`). Counters the worker
keeps anyway (retries, fenced batches, degraded) are read from its
``WorkerStats`` when Prometheus scrapes. ``consumers.probes`` serves the
registry and the probes over HTTP.

Metrics (label ``table`` unless said otherwise):

- ``society_ingest_records_consumed_total``: records taken from Kafka, counted
  when their batch is handed to the writer (a batch fenced or given up is
  consumed again, and counted again);
- ``society_ingest_rows_loaded_total``, ``society_ingest_duplicates_total``,
  ``society_ingest_conflicts_total``: what committed batches did with their
  rows (runs and agents: states written; see ``consumers.sink``);
- ``society_ingest_dead_letters_total`` (``table``, ``error_class``);
- ``society_ingest_batch_rows``: records in a committed batch (rows and dead letters);
- ``society_ingest_batch_latency_seconds``: from a batch's first consumed
  message to its commit (linger, waiting for the writer, writing);
- ``society_ingest_commit_seconds``: one batch's PostgreSQL transaction, from
  its first statement to COMMIT, dead-letter acknowledgements included
  (successful attempts only);
- ``society_ingest_end_to_end_seconds``: from a record's Kafka timestamp (the
  time the producer sent it) to the commit of its batch. Sampled, not per
  record: one observation per table per committed batch, for the batch's
  first row of that table, which is the earliest consumed and so about the
  oldest (Kafka timestamps grow along a partition). The count is therefore
  batches, and the values lean to the worst case of each batch;
- ``society_ingest_last_commit_timestamp_seconds``: Unix time of the last commit;
- ``society_ingest_consumer_lag`` (``table``, ``topic``, ``partition``): the
  partition's high watermark (librdkafka's cached value, no broker request)
  minus the next offset committed to PostgreSQL;
- ``society_ingest_assigned_partitions``, ``society_ingest_degraded`` (1 while
  retrying a service), ``society_ingest_retries_total``,
  ``society_ingest_fenced_batches_total``;
- ``society_ingest_worker_info`` (``worker_id``, ``group``, ``topic_prefix``,
  ``version``) and prometheus-client's ``process_*`` and ``python_*``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from consumers._deps import require
from consumers.batch import Batch, TopicPartition, source_of

#: How often the consume loop refreshes the lag gauges (cached watermarks: cheap, but not per pass).
LAG_REFRESH_S = 5.0
#: /readyz: a handed-over batch not committed within this long makes the worker not ready.
DEFAULT_READY_WINDOW_S = 60.0
#: Up to the default batch bound (20,000 rows) and beyond.
BATCH_ROWS_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000)
#: Sub-second commits are the norm; minutes mean an outage.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_ABSENT = object()


def _version() -> str:
    try:
        return metadata.version("society-ingest")
    except metadata.PackageNotFoundError:
        return "unknown"


class NoMetrics:
    """The worker's hooks doing nothing: a worker without ``metrics=`` (and a replay)."""

    def bind(self, settings: Any, stats: Any) -> None:
        """Called once by the worker with its settings and live stats."""

    def started(self) -> None:
        """The worker's ``run()`` began (in the calling thread)."""

    def stopped(self) -> None:
        """The worker's ``run()`` ended."""

    def assigned(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        """Partitions assigned, with their stored next offsets (None: nothing stored)."""

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked or lost."""

    def handed_over(self, batch: Batch) -> None:
        """A batch goes to the writer (consumer thread)."""

    def committed(self, batch: Batch, result: Any, seconds: float) -> None:
        """The writer committed `batch` in `seconds` (writer thread, right after COMMIT)."""

    def finished(self) -> None:
        """The writer is done with the oldest handed-over batch: committed, fenced or failed."""

    def tick(self, consumer: Any) -> None:
        """One pass of the consume loop."""


class WorkerMetrics(NoMetrics):
    """A worker's Prometheus metrics (module doc) and its liveness and readiness; one per worker.

    `ready_window_s`: a batch handed to the writer and not committed within it
    makes the worker not ready. `registry`: where to register (default: a new
    one of its own). `process`: add prometheus-client's process and platform
    collectors.
    """

    def __init__(
        self,
        *,
        ready_window_s: float = DEFAULT_READY_WINDOW_S,
        lag_refresh_s: float = LAG_REFRESH_S,
        registry: Any = None,
        process: bool = True,
    ) -> None:
        prom = require("prometheus_client", "worker")
        self._prom = prom
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self.ready_window_s = ready_window_s
        self._lag_refresh_s = lag_refresh_s
        reg = self.registry
        by_table = ("table",)
        self._consumed = prom.Counter(
            "society_ingest_records_consumed", "Records consumed from Kafka (counted per batch handed to the writer).",
            by_table, registry=reg)
        self._loaded = prom.Counter(
            "society_ingest_rows_loaded", "Rows written by committed batches.", by_table, registry=reg)
        self._duplicates = prom.Counter(
            "society_ingest_duplicates", "Records already loaded (skipped).", by_table, registry=reg)
        self._conflicts = prom.Counter(
            "society_ingest_conflicts", "Records whose key exists with different content (kept in ingest_conflicts).",
            by_table, registry=reg)
        self._dead = prom.Counter(
            "society_ingest_dead_letters", "Records sent to the dead-letter topic.", ("table", "error_class"),
            registry=reg)
        self._batch_rows = prom.Histogram(
            "society_ingest_batch_rows", "Records (rows and dead letters) in a committed batch.",
            buckets=BATCH_ROWS_BUCKETS, registry=reg)
        self._batch_latency = prom.Histogram(
            "society_ingest_batch_latency_seconds", "From a batch's first consumed message to its commit.",
            buckets=LATENCY_BUCKETS, registry=reg)
        self._commit_seconds = prom.Histogram(
            "society_ingest_commit_seconds", "One batch's PostgreSQL transaction, first statement to COMMIT.",
            buckets=LATENCY_BUCKETS, registry=reg)
        self._end_to_end = prom.Histogram(
            "society_ingest_end_to_end_seconds",
            "From a record's Kafka timestamp to its commit (one sample per table per batch: its oldest row).",
            by_table, buckets=LATENCY_BUCKETS, registry=reg)
        self._last_commit = prom.Gauge(
            "society_ingest_last_commit_timestamp_seconds", "Unix time of the last commit.", registry=reg)
        self._lag = prom.Gauge(
            "society_ingest_consumer_lag", "High watermark minus the next offset committed to PostgreSQL.",
            ("table", "topic", "partition"), registry=reg)
        self._assigned_gauge = prom.Gauge(
            "society_ingest_assigned_partitions", "Partitions this worker owns.", registry=reg)
        self._info = prom.Info("society_ingest_worker", "Which worker this is.", registry=reg)
        if process:
            prom.ProcessCollector(registry=reg)
            prom.PlatformCollector(registry=reg)
        self._lock = threading.Lock()
        self._stats: Any = None
        self._tables: dict[str, str] = {}  # topic -> table
        #: Next offset committed to PostgreSQL per owned partition (None: nothing yet).
        self._committed: dict[TopicPartition, int | None] = {}
        #: time.monotonic() of each batch handed to the writer and not finished yet, oldest first.
        self._in_flight: deque[float] = deque()
        self._state = "starting"
        self._thread: threading.Thread | None = None
        self._last_pass: float | None = None
        self._lag_at = 0.0

    # -- the worker's hooks ---------------------------------------------------
    def bind(self, settings: Any, stats: Any) -> None:
        from producers import tables

        self._stats = stats
        self._tables = {tables.topic_for(settings.topic_prefix, t): t for t in settings.tables}
        for t in settings.tables:  # every table's series exists from the start, at 0
            for counter in (self._consumed, self._loaded, self._duplicates, self._conflicts):
                counter.labels(t)
        self._info.info({
            "worker_id": settings.worker_id, "group": settings.group_id,
            "topic_prefix": settings.topic_prefix, "version": _version(),
        })
        self.registry.register(_StatsCollector(self))

    def started(self) -> None:
        self._thread = threading.current_thread()
        self._last_pass = time.monotonic()
        self._state = "running"

    def stopped(self) -> None:
        self._state = "stopped"

    def assigned(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        with self._lock:
            self._committed.update(offsets)
            self._assigned_gauge.set(len(self._committed))
        self._lag_at = 0.0  # refresh at the next pass

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                if self._committed.pop(tp, _ABSENT) is _ABSENT:
                    continue
                try:
                    self._lag.remove(self._tables.get(tp[0], ""), tp[0], str(tp[1]))
                except KeyError:
                    pass  # never measured
            self._assigned_gauge.set(len(self._committed))

    def handed_over(self, batch: Batch) -> None:
        consumed: dict[str, int] = {}
        for table, rows in batch.tables.items():
            if rows.rows:
                consumed[table] = len(rows.rows)
        for d in batch.dead:
            consumed[d.table or ""] = consumed.get(d.table or "", 0) + 1
        for table, n in consumed.items():
            self._consumed.labels(table).inc(n)
        with self._lock:
            self._in_flight.append(time.monotonic())

    def committed(self, batch: Batch, result: Any, seconds: float) -> None:
        now, now_s = time.monotonic(), time.time()
        self._commit_seconds.observe(seconds)
        self._batch_rows.observe(len(batch))
        if batch.started:
            self._batch_latency.observe(max(0.0, now - batch.started))
        self._last_commit.set(now_s)
        for table, rows in batch.tables.items():
            first = source_of(rows.sources[0]) if rows.sources else None
            if first is not None and first.timestamp_ms is not None:
                self._end_to_end.labels(table).observe(max(0.0, now_s - first.timestamp_ms / 1000))
        for table in self._tables.values():
            self._loaded.labels(table).inc(result.inserted[table])
            self._duplicates.labels(table).inc(result.duplicates[table])
            self._conflicts.labels(table).inc(result.table_conflicts[table])
        for d in result.dead:
            self._dead.labels(d.table or "", d.error_class).inc()
        with self._lock:
            for tp, next_offset in batch.next_offsets.items():
                if tp in self._committed:
                    self._committed[tp] = next_offset

    def finished(self) -> None:
        with self._lock:
            if self._in_flight:
                self._in_flight.popleft()

    def tick(self, consumer: Any) -> None:
        now = time.monotonic()
        self._last_pass = now
        if now - self._lag_at < self._lag_refresh_s:
            return
        self._lag_at = now
        with self._lock:
            owned = list(self._committed.items())
        for (topic, partition), committed in owned:
            try:
                low, high = consumer.get_watermark_offsets(KafkaTopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue  # a gauge is not worth stopping a worker for; the next refresh tries again
            if high < 0:
                continue  # nothing fetched from this partition yet
            done = committed if committed is not None else max(low, 0)
            self._lag.labels(self._tables.get(topic, ""), topic, str(partition)).set(max(0, high - done))

    # -- probes ---------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive while the worker is starting or its loop's thread runs; with details."""
        state = self._state
        alive = state == "starting" or state == "running" and self._thread is not None and self._thread.is_alive()
        body: dict[str, Any] = {"alive": alive, "state": state}
        if self._last_pass is not None:
            body["last_loop_s_ago"] = round(time.monotonic() - self._last_pass, 3)
        return alive, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when running, not degraded, owning partitions, and no batch waits for its commit too long."""
        alive, _ = self.liveness()
        stats = self._stats
        with self._lock:
            partitions = len(self._committed)
            oldest = self._in_flight[0] if self._in_flight else None
        reason = None
        if not alive or self._state != "running":
            reason = f"worker {self._state}"
        elif stats is not None and stats.degraded:
            reason = f"degraded: retrying after: {stats.last_error}"
        elif not partitions:
            reason = "no partitions assigned"
        elif oldest is not None and time.monotonic() - oldest > self.ready_window_s:
            reason = (f"a batch has waited {time.monotonic() - oldest:.0f}s for its commit "
                      f"(ready window {self.ready_window_s:g}s)")
        if reason is not None:
            return False, {"ready": False, "reason": reason}
        return True, {"ready": True, "partitions": partitions}

    # -- scraping -------------------------------------------------------------
    def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format `accept` asks for (Prometheus text by default), and its content type."""
        encoder, content_type = self._prom.exposition.choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StatsCollector:
    """Reads the worker's own counters when Prometheus scrapes (nothing to do on the hot path)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return list(self._families(None))

    def collect(self) -> Iterator[Any]:
        return self._families(self._metrics._stats)

    def _families(self, stats: Any) -> Iterator[Any]:
        core = self._metrics._prom.metrics_core
        for name, text, kind, attr in (
            ("society_ingest_retries", "Transient failures retried (database, broker).", "counter", "retries"),
            ("society_ingest_fenced_batches", "Batches fenced by another worker's commit.", "counter", "fenced"),
            ("society_ingest_degraded", "1 while retrying a failed service, else 0.", "gauge", "degraded"),
        ):
            family = core.CounterMetricFamily if kind == "counter" else core.GaugeMetricFamily
            if stats is None:
                yield family(name, text)
            else:
                yield family(name, text, value=float(getattr(stats, attr)))
