"""``society-ingest status``: rows per table and consumer lag per partition."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated

from consumers import status as ops
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Group, Json, Prefix, Timeout, console, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka
from consumers.settings import DEFAULT_GROUP
from producers.kafka_config import KafkaClientSettings


def _run_status(answer: ops.RunCompleteness, as_json: bool) -> None:
    if as_json:
        print_json({**dataclasses.asdict(answer), "missing": answer.missing})
    else:
        recorded = answer.recorded or {}
        print_table(
            f"run {answer.run_id} ({answer.status or 'unknown'})",
            ["table", "recorded", "loaded", "dead-lettered", "missing"],
            [[t, recorded.get(t, "?"), answer.loaded[t], answer.dead_lettered[t],
              max(0, recorded[t] - answer.loaded[t]) if t in recorded else "?"] for t in answer.loaded],
        )
        detail = {
            ops.COMPLETE: "every recorded record is in its table",
            ops.NOT_YET: "the run's end, with its record counts, has not landed" if answer.recorded is None
            else f"{answer.lag} record(s) still to consume",
            ops.INCOMPLETE: f"{answer.missing} record(s) missing, nothing left to consume"
            + (f" ({sum(answer.dead_lettered.values())} dead-lettered: see `society-ingest dlq show`)"
               if any(answer.dead_lettered.values()) else ""),
        }[answer.state]
        console.print(f"{answer.state}: {detail}")
    raise typer.Exit(RUN_EXIT[answer.state])


#: Exit status of ``status --run`` per answer: a script can wait for 0.
RUN_EXIT = {ops.COMPLETE: 0, ops.INCOMPLETE: 1, ops.NOT_YET: 3}


@kafka_options
def status(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    group: Group = DEFAULT_GROUP,
    run: Annotated[
        uuid.UUID | None,
        typer.Option("--run", help="Has this run fully landed? Exit 0 complete, 3 not yet, 1 incomplete."),
    ] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Show rows per table, recent runs, the group's lag per partition and its workers; or one run's completeness."""
    db = database(database_url, timeout)
    if run is not None:
        reach_kafka(kafka, timeout)
        _run_status(ops.run_completeness(kafka, db, topic_prefix, group, run, timeout_s=timeout), as_json)
        return
    counts = ops.row_counts(db)
    workers = [w for w in ops.worker_health(db) if w.consumer_group == group]
    reach_kafka(kafka, timeout)
    lags = ops.consumer_lag(kafka, db, topic_prefix, group, timeout_s=timeout)
    runs = ops.recent_runs(db)
    if as_json:
        print_json({
            "rows": counts,
            "runs": runs,
            "lag": [dataclasses.asdict(lag) for lag in lags],
            "workers": [dataclasses.asdict(w) for w in workers],
        })
        return
    print_table("rows", ["table", "rows"], [[t, n] for t, n in counts.items()])
    print_table(
        "recent runs (status --run ID says whether one has fully landed)",
        ["run", "status", "started", "ended", "records recorded"],
        [[r["run_id"], r["status"], r["start_time"], r["end_time"],
          "" if r["recorded"] is None else sum(r["recorded"].values())] for r in runs],
    )
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
