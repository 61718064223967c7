"""The producer's counters in a Prometheus registry: read from stats() at scrape time, nothing per record."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producers import ProducerSettings, SocietyProducer

#: Nothing listens there: records stay queued, which is all these tests need.
CLOSED = "127.0.0.1:1"


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def make(registry: CollectorRegistry | None) -> SocietyProducer:
    return SocietyProducer(ProducerSettings(bootstrap_servers=CLOSED, topic_prefix="m"), metrics_registry=registry)


def test_the_registry_shows_what_stats_says() -> None:
    registry = CollectorRegistry()
    p = make(registry)
    try:
        assert scrape(registry)[("society_ingest_producer_records_sent_total", (("table", "agent_memories"),))] == 0
        p.start_run()
        for i in range(3):
            p.record_memory("agent_0", f"m{i}", 1)
        got = scrape(registry)
        stats = p.stats()
        assert got[("society_ingest_producer_records_sent_total", (("table", "agent_memories"),))] == 3
        assert got[("society_ingest_producer_records_sent_total", (("table", "simulation_runs"),))] == 1
        assert got[("society_ingest_producer_records_delivered_total", ())] == stats.delivered == 0
        assert got[("society_ingest_producer_delivery_failures_total", ())] == 0
        assert got[("society_ingest_producer_queue_full_waits_total", ())] == 0
        assert got[("society_ingest_producer_queued_records", ())] == stats.in_queue >= 4
    finally:
        p.abort()


def test_two_producers_in_one_registry_are_refused() -> None:
    registry = CollectorRegistry()
    p = make(registry)
    try:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            make(registry)
    finally:
        p.abort()


def test_the_registry_does_not_keep_a_dropped_producer_alive() -> None:
    registry = CollectorRegistry()
    p = make(registry)
    p.abort()  # nothing left to flush at collection
    del p
    gc.collect()
    assert not any(name.startswith("society_ingest_producer") for name, _ in scrape(registry))


def test_without_a_registry_nothing_is_registered() -> None:
    p = make(None)
    p.abort()
