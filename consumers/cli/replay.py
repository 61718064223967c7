"""``society-ingest replay``: load a run, a time range or offset ranges back from Kafka."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from consumers._deps import psycopg
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options, properties
from consumers.cli._options import (
    DatabaseUrl, DeadLetterMaxConsecutive, DeadLetterMaxPerMinute, Json, Prefix, Timeout, console, fail, print_json,
    print_note, print_table, print_warning, setup_logging, typer,
)
from consumers.cli._progress import Progress
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka, require_schema, require_topics
from consumers.logs import bind_fields
from consumers.migrations import create_schema, in_schema
from consumers.replay import OffsetRange, Replay, ReplaySummary, Selection, TableSummary, replay_worker_id
from consumers.settings import WorkerSettings
from producers import tables
from producers.kafka_config import KafkaClientSettings

#: Exit status of a replay stopped (Ctrl-C, SIGTERM) before its end: run it again with --resume.
EXIT_INTERRUPTED = 130

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_OFFSETS = re.compile(r"^([a-z_]+):(\d+):(\d+)-(\d*)$")


def parse_time(text: str, option: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (UTC unless it says otherwise) or of "<N>[smhd]" ago."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    try:
        if relative:
            moment = datetime.now(timezone.utc) - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        ms = int(moment.timestamp() * 1000)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-11-28T10:00:00Z) nor a duration ago (30m, 2h, 1d)",
            param_hint=option,
        ) from None
    except OverflowError:
        ms = -1
    if ms < 0:
        # Kafka's time index knows nothing earlier, and reads -1 and -2 as "latest" and "earliest".
        raise typer.BadParameter(f"{text!r} is before 1970: Kafka timestamps start there", param_hint=option)
    return ms


def parse_offsets(specs: list[str]) -> tuple[OffsetRange, ...]:
    """``TABLE:PARTITION:START-END`` (END exclusive, empty: to the log's end) per option."""
    ranges = []
    for spec in specs:
        m = _OFFSETS.match(spec.strip())
        if not m:
            raise typer.BadParameter(f"{spec!r} is not TABLE:PARTITION:START-END (e.g. agent_memories:0:100-200)",
                                     param_hint="--offsets")
        table, partition, start, end = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if table not in tables.TABLES:
            raise typer.BadParameter(f"unknown table {table!r} in {spec!r}; expected one of {', '.join(tables.TABLES)}",
                                     param_hint="--offsets")
        if end and int(end) <= start:
            raise typer.BadParameter(f"{spec!r}: END must be greater than START (END is exclusive)",
                                     param_hint="--offsets")
        ranges.append(OffsetRange(table, partition, start, int(end) if end else None))
    seen = [(r.table, r.partition) for r in ranges]
    if len(set(seen)) != len(seen):
        raise typer.BadParameter("a partition is given twice", param_hint="--offsets")
    return tuple(ranges)


@kafka_options
def replay(
    database_url: DatabaseUrl = "",
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "--tables", "-t", help=f"Table to replay (repeat); default all: {', '.join(tables.TABLES)}."),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only the records of this simulation run (its UUID).")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only records sent at or after this time: ISO 8601 (UTC unless it has an offset) or 30m/2h/1d ago."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only records sent before this time (same forms as --since).")] = None,
    offsets: Annotated[
        list[str] | None,
        typer.Option(help="Only offsets START..END-1 of one partition: TABLE:PARTITION:START-END, END empty for the "
                          "log's end (repeat; replaces --table)."),
    ] = None,
    target_schema: Annotated[
        str | None,
        typer.Option(help="Load into this schema (created from the same migrations) instead of the live tables."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count per table what is selected, valid and invalid; write nothing.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted replay of the same selection where it stopped.")
    ] = False,
    max_batch_rows: Annotated[int, typer.Option(min=1, help="Commit after this many rows.")] = 20_000,
    validate: Annotated[bool, typer.Option(help="Validate records as the worker does.")] = True,
    dead_letter_max_consecutive: DeadLetterMaxConsecutive = 1_000,
    dead_letter_max_per_minute: DeadLetterMaxPerMinute = 10_000,
    consumer_property: Annotated[
        list[str] | None,
        typer.Option("--consumer-property", "-X", help="Extra librdkafka consumer property KEY=VALUE (repeat)."),
    ] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Read records back from Kafka into PostgreSQL: one run, a time range, offset ranges, or everything.

    The replay reads each partition up to where its log ended when the replay
    started, under its own group (the live workers' offsets are untouched), and
    loads exactly as the worker does: rows already there count as duplicates,
    differing ones go to ingest_conflicts, bad records to the dead-letter topic.
    Exit 0 when the whole range was replayed, 130 when stopped first (run the
    same command with --resume to continue).
    """
    setup_logging()
    unknown = sorted(set(table or ()) - set(tables.TABLES))
    if unknown:
        raise typer.BadParameter(f"unknown table(s): {', '.join(unknown)}", param_hint="--table")
    if not re.match(tables.TOPIC_PREFIX_PATTERN, topic_prefix):
        raise typer.BadParameter(f"{topic_prefix!r} is not a topic prefix (letters, digits, . _ -)",
                                 param_hint="--topic-prefix")
    if dry_run and resume:
        raise typer.BadParameter("a dry run writes no offsets, so there is nothing to resume", param_hint="--resume")
    if target_schema == "public":
        raise typer.BadParameter("public holds the live tables: leave --target-schema out to replay into them",
                                 param_hint="--target-schema")
    ranges = parse_offsets(offsets or [])
    wanted = {r.table for r in ranges} if ranges else set(table or tables.TABLES)
    chosen = tuple(t for t in tables.TABLES if t in wanted)
    try:
        run_id = None if run is None else uuid.UUID(run)
    except ValueError:
        raise typer.BadParameter(f"{run!r} is not a run id (a UUID)", param_hint="--run") from None
    since_ms = None if since is None else parse_time(since, "--since")
    until_ms = None if until is None else parse_time(until, "--until")
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise typer.BadParameter("--until must be later than --since", param_hint="--until")
    selection = Selection(chosen, run_id, since_ms, until_ms, ranges, (since, until))
    extra = _properties(consumer_property or [])
    if not database_url and not dry_run:
        raise typer.BadParameter("missing: pass it or set DATABASE_URL", param_hint="--database-url")

    live = database(database_url, timeout) if database_url else None
    target = live
    if target_schema is not None:
        try:
            in_schema("", target_schema)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--target-schema") from None
    if live is not None and not dry_run:
        if target_schema is None:
            require_schema(live)
        else:
            applied = create_schema(live, target_schema)
            for notice in applied.notices:
                print_warning(notice)
            if applied:
                print_note(f"schema {target_schema}: applied {len(applied)} migration(s)")
            target = in_schema(live, target_schema)
    require_topics(reach_kafka(kafka, timeout, extra), topic_prefix, chosen, kafka=kafka)

    settings = WorkerSettings(
        kafka=kafka,
        database_url=target or "",
        topic_prefix=topic_prefix,
        group_id=selection.group(topic_prefix, target_schema),
        tables=chosen,
        worker_id=replay_worker_id(),
        max_batch_rows=max_batch_rows,
        validate_records=validate,
        dead_letter_max_consecutive=dead_letter_max_consecutive,
        dead_letter_max_per_minute=dead_letter_max_per_minute,
        consumer_extra={**extra, "enable.partition.eof": True},
    )
    bind_fields(worker_id=settings.worker_id)  # on every JSON log line, as the worker's
    with Progress("dry run" if dry_run else "replay", None) as bar:
        def planned(summary: ReplaySummary) -> None:
            bar.set_total(summary.total)
            for warning in summary.warnings:
                print_warning(warning)
            if summary.resumed_from:
                print_note(f"resuming: {summary.resumed_from:,} offset(s) were replayed before")

        worker = Replay(settings, selection, dry_run=dry_run, resume=resume, target_schema=target_schema,
                        on_plan=planned, on_progress=bar.advance)
        worker.install_signal_handlers()
        try:
            summary = worker.run()
        except ValueError as e:  # the plan names a partition the topic lacks
            raise typer.BadParameter(str(e), param_hint="--offsets") from None
    late = _empty_selection(summary, selection)
    if selection.whole_run and live is not None and not dry_run:
        late += _missing_from_kafka(live, run_id, summary)
    summary.warnings.extend(late)
    _report(summary, as_json)
    for warning in late:
        print_warning(warning)
    if not summary.finished:
        done = f"{summary.scanned + summary.resumed_from:,} of {summary.total:,} offset(s)"
        fail(f"dry run stopped before the end: {done} read" if dry_run else
             f"stopped before the end: {done} replayed; run the same command with --resume to continue",
             EXIT_INTERRUPTED)


#: librdkafka properties a replay sets itself: changing them would touch a group's offsets in Kafka.
_OWN_PROPERTIES = {"group.id", "group.instance.id", "enable.auto.commit", "enable.auto.offset.store",
                   "enable.partition.eof", "bootstrap.servers"}


def _properties(props: list[str]) -> dict[str, Any]:
    extra = properties(props)
    for key in extra:
        if key in _OWN_PROPERTIES:
            raise typer.BadParameter(f"{key} is the replay's own setting (its group keeps the live "
                                     "workers' offsets untouched)", param_hint="--consumer-property")
    return extra


def _empty_selection(summary: ReplaySummary, selection: Selection) -> list[str]:
    """Say so when the selection found nothing, instead of a table of zeros."""
    if not summary.finished or any(c.selected for c in summary.tables.values()) or summary.resumed_from:
        return []
    if summary.total == 0:
        return ["the selected range holds no records (the topics are empty there, or it starts past their end)"]
    if selection.run_id is not None:
        return [f"no record of run {selection.run_id} in the {summary.scanned:,} record(s) read"]
    return [f"none of the {summary.scanned:,} record(s) read is in the selected time range"]


def _missing_from_kafka(conninfo: str, run_id: uuid.UUID, summary: ReplaySummary) -> list[str]:
    """Compare what Kafka held of the run with the record counts the producer sent at its end."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT record_counts FROM simulation_runs WHERE run_id = %s", (run_id,)).fetchone()
    except psycopg.Error as e:
        logging.getLogger(__name__).info("cannot read the run's record counts: %s", e)
        return []
    recorded = (row[0] if row else None) or {}
    warnings = []
    for table, counts in summary.tables.items():
        expected = recorded.get(table)
        if isinstance(expected, int) and counts.selected < expected and table != tables.SIMULATION_RUNS:
            warnings.append(
                f"{table}: Kafka held {counts.selected:,} of the {expected:,} record(s) the run recorded; "
                f"{expected - counts.selected:,} are gone (retention) or were never delivered"
            )
    return warnings


def _counts(counts: TableSummary, dry_run: bool) -> dict[str, int]:
    if dry_run:  # nothing was loaded: what would be loaded (or found there) and what would be dead-lettered
        return {"scanned": counts.scanned, "selected": counts.selected, "valid": counts.loaded,
                "invalid": counts.dead_lettered}
    return dataclasses.asdict(counts)


def _report(summary: ReplaySummary, as_json: bool) -> None:
    rate = summary.scanned / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    if as_json:
        print_json({
            "group": summary.group,
            "dry_run": summary.dry_run,
            "target_schema": summary.target_schema,
            "finished": summary.finished,
            "elapsed_s": round(summary.elapsed_s, 3),
            "records_per_s": round(rate, 1),
            "offsets_total": summary.total,
            "resumed_from": summary.resumed_from,
            "conflicts": summary.conflicts,
            "tables": {t: _counts(c, summary.dry_run) for t, c in summary.tables.items()},
            "partitions": [
                {"topic": p.topic, "partition": p.partition, "start": p.start, "end": p.end, "low": p.low,
                 "high": p.high, "gone": p.gone}
                for p in summary.partitions
            ],
            "warnings": summary.warnings,
        })
        return
    loaded = "valid" if summary.dry_run else "loaded"
    dead = "invalid (would dead-letter)" if summary.dry_run else "dead-lettered"
    columns = ["table", "scanned", "selected", loaded, dead] + ([] if summary.dry_run else ["duplicates"])
    rows = [
        [t, f"{c.scanned:,}", f"{c.selected:,}", f"{c.loaded:,}", f"{c.dead_lettered:,}"]
        + ([] if summary.dry_run else [f"{c.duplicates:,}"])
        for t, c in summary.tables.items()
    ]
    where = f"schema {summary.target_schema}" if summary.target_schema else "the live tables"
    print_table(f"{'dry run' if summary.dry_run else 'replay'} into {where}", columns, rows)
    line = f"{summary.scanned:,} record(s) read in {summary.elapsed_s:.1f}s ({rate:,.0f}/s)"
    if not summary.dry_run:
        line += f"; {summary.conflicts:,} conflict(s) kept in ingest_conflicts"
    console.print(line)
