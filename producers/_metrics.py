"""The producer's counters as Prometheus metrics, read from ``stats()`` when scraped.

Imported only when a ``SocietyProducer`` is given a ``metrics_registry`` (so
``import producers`` never loads prometheus-client). Nothing happens per
record: the collector takes one ``stats()`` snapshot per scrape.

- ``society_ingest_producer_records_sent_total`` (``table``): records accepted
  (validated, encoded, enqueued);
- ``society_ingest_producer_records_delivered_total``,
  ``society_ingest_producer_delivery_failures_total``: delivery reports;
- ``society_ingest_producer_queue_full_waits_total``: calls that waited on a full local queue;
- ``society_ingest_producer_queued_records``: records (and requests) still waiting for the broker.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from producers import tables

_PREFIX = "society_ingest_producer_"


class ProducerCollector:
    """Collects a producer's ``stats()``; holds only a weak reference, so a dropped producer is still collected."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = weakref.WeakMethod(stats)  # type: ignore[arg-type]

    def describe(self) -> list[Any]:
        return list(self._families(None))

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        if stats is None:  # the producer is gone
            return iter(())
        return self._families(stats())

    @staticmethod
    def _families(s: Any) -> Iterator[Any]:
        sent = CounterMetricFamily(_PREFIX + "records_sent", "Records accepted (validated, encoded, enqueued).",
                                   labels=["table"])
        if s is not None:
            for table in tables.TABLES:
                sent.add_metric([table], s.sent[table])
        yield sent
        for name, text, attr in (
            ("records_delivered", "Records the broker acknowledged.", "delivered"),
            ("delivery_failures", "Records the broker did not take (reported by flush/close).", "failed"),
            ("queue_full_waits", "Calls that waited on a full local queue.", "queue_full_waits"),
        ):
            yield CounterMetricFamily(_PREFIX + name, text, value=None if s is None else getattr(s, attr))
        yield GaugeMetricFamily(_PREFIX + "queued_records", "Records and requests still waiting for the broker.",
                                value=None if s is None else s.in_queue)


def register(registry: Any, stats: Callable[[], Any]) -> ProducerCollector:
    """Register a collector of `stats` (a producer's bound ``stats`` method) in `registry`."""
    collector = ProducerCollector(stats)
    registry.register(collector)
    return collector
