"""``society-ingest status``: rows per table and consumer lag per partition."""

from __future__ import annotations

import dataclasses

from consumers import status as ops
from consumers.cli._options import (
    DEFAULT_BOOTSTRAP, Bootstrap, DatabaseUrl, Group, Json, Prefix, print_json, print_table,
)
from consumers.settings import DEFAULT_GROUP


def status(
    database_url: DatabaseUrl,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    topic_prefix: Prefix = "society",
    group: Group = DEFAULT_GROUP,
    as_json: Json = False,
) -> None:
    """Show rows per table and the group's lag per partition."""
    counts = ops.row_counts(database_url)
    lags = ops.consumer_lag(bootstrap_servers, database_url, topic_prefix, group)
    if as_json:
        print_json({"rows": counts, "lag": [dataclasses.asdict(lag) for lag in lags]})
        return
    print_table("rows", ["table", "rows"], [[t, n] for t, n in counts.items()])
    print_table(
        f"lag of group {group}",
        ["topic", "partition", "stored offset", "end offset", "lag"],
        [[lag.topic, lag.partition, lag.stored_offset, lag.high_watermark, lag.lag] for lag in lags],
    )
