"""``society-ingest status``: rows per table and consumer lag per partition."""

from __future__ import annotations

import dataclasses

from consumers import status as ops
from consumers.cli._options import (
    DEFAULT_BOOTSTRAP, Bootstrap, DatabaseUrl, Group, Json, Prefix, Timeout, print_json, print_table,
)
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, kafka
from consumers.settings import DEFAULT_GROUP


def status(
    database_url: DatabaseUrl,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    topic_prefix: Prefix = "society",
    group: Group = DEFAULT_GROUP,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Show rows per table, the group's lag per partition, and its workers' last commits."""
    db = database(database_url, timeout)
    counts = ops.row_counts(db)
    workers = [w for w in ops.worker_health(db) if w.consumer_group == group]
    kafka(bootstrap_servers, timeout)
    lags = ops.consumer_lag(bootstrap_servers, db, topic_prefix, group, timeout_s=timeout)
    if as_json:
        print_json({
            "rows": counts,
            "lag": [dataclasses.asdict(lag) for lag in lags],
            "workers": [dataclasses.asdict(w) for w in workers],
        })
        return
    print_table("rows", ["table", "rows"], [[t, n] for t, n in counts.items()])
    print_table(
        f"lag of group {group}",
        ["topic", "partition", "stored offset", "end offset", "lag"],
        [[lag.topic, lag.partition, lag.stored_offset, lag.high_watermark, lag.lag] for lag in lags],
    )
    print_table(
        f"workers of group {group}",
        ["worker", "last commit", "batches", "rows", "dead letters", "retries", "last error"],
        [[w.worker_id, f"{w.seconds_since_commit:.0f}s ago", w.batches, w.rows_loaded, w.dead_lettered,
          w.retries, (w.last_error or "")[:60]] for w in workers],
    )
