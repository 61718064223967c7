"""``society-ingest backfill``: records from NDJSON files through the embedded producer, resumable."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

from consumers import backfill as ops
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import Json, Prefix, Timeout, console, err_console, fail, print_json, print_table, typer
from consumers.cli._progress import Progress
from consumers.cli._services import DEFAULT_TIMEOUT_S, reach_kafka, require_topics
from consumers.kafka_clients import librdkafka_logger
from consumers.topics import admin_client
from producers import KafkaClientSettings, ProducerSettings, SocietyProducer
from producers.tables import TABLES

#: Bad lines printed when a batch stops the run (all of them are in the report).
SHOWN_ERRORS = 20
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class StopOnSignal:
    """First SIGINT/SIGTERM: stop after the batch in hand (it is delivered and checkpointed); second: at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err_console.print("stopping after the batch in hand (again to quit at once)", style="yellow")

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _lines_in(files: list[Path]) -> int | None:
    """Lines in plain files (for the progress bar's total), None when one is gzip."""
    total = 0
    for path in files:
        with path.open("rb") as f:
            if f.read(2) == ops.GZIP_MAGIC:
                return None
            f.seek(0)
            last = b"\n"
            while chunk := f.read(1 << 20):
                total += chunk.count(b"\n")
                last = chunk[-1:]
            total += last != b"\n"  # a last line without a newline
    return total


def _summary(result: ops.BackfillResult) -> None:
    rows = [[t, f"{c.read:,}", f"{c.sent:,}", f"{c.skipped:,}"] for t, c in result.counts.items() if c.read]
    total = [sum(getattr(c, k) for c in result.counts.values()) for k in ("read", "sent", "skipped")]
    rows.append(["all"] + [f"{n:,}" for n in total])
    print_table(f"backfill: {result.state}", ["table", "lines read", "sent", "skipped (bad)"], rows)
    rate = f" ({result.sent / result.elapsed_s:,.0f} records/s)" if result.elapsed_s > 0 and result.sent else ""
    notes = [f"{result.sent:,} records sent and acknowledged in {result.elapsed_s:.1f}s{rate}"]
    if result.resumed_lines:
        notes.append(f"resumed after {result.resumed_lines:,} line(s) delivered before")
    if result.derived_ids:
        notes.append(f"{result.derived_ids:,} memory/event id(s) derived from content")
    if result.blank_lines:
        notes.append(f"{result.blank_lines:,} blank line(s)")
    for column, n in result.ignored_columns.items():
        notes.append(f"{column} ignored on {n:,} line(s) (the database generates it)")
    console.print("; ".join(notes), highlight=False)
    console.print(f"checkpoint: {result.checkpoint}" + (f"; bad lines: {result.report}" if result.report else ""),
                  highlight=False)


def _stopped(result: ops.BackfillResult) -> None:
    for e in result.errors[:SHOWN_ERRORS]:
        err_console.print(e.text(), highlight=False, soft_wrap=True)
    more = result.bad_lines - min(len(result.errors), SHOWN_ERRORS)
    if more:
        err_console.print(f"… and {more:,} more (all in {result.report})", highlight=False)
    file, delivered = result.position or ("?", 0)
    sent = f"nothing of their batch was sent (lines 1–{delivered:,} are delivered)" if delivered else "nothing was sent"
    fail(f"{result.bad_lines:,} bad line(s) in {file}, the first at line {result.errors[0].line:,}: {sent}; "
         "fix them and run the same command again to resume, or add --skip-bad to skip them")


@kafka_options
def backfill(
    files: Annotated[
        list[Path],
        typer.Argument(help="Newline-delimited JSON files, plain or gzip (one object per line).",
                       exists=True, dir_okay=False, readable=True, show_default=False),
    ],
    table: Annotated[
        str | None,
        typer.Option("--table", help=f"Table of every line (else each line's 'table' field): {', '.join(TABLES)}."),
    ] = None,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip bad lines (listed in --report) instead of stopping.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Where bad lines are listed (NDJSON: a header line, then file, line, field, reason, "
                          "raw). Default: beside the checkpoint.", dir_okay=False, show_default=False),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint file. Default: beside the first file, named after the arguments.",
                     dir_okay=False, show_default=False),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore an existing checkpoint and send every line again.")
    ] = False,
    batch_lines: Annotated[
        int, typer.Option(min=1, help="Lines validated, sent and checkpointed together.")
    ] = ops.BATCH_LINES,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Produce records from NDJSON files with the embedded producer's validation, encoding and keys.

    Resumable: after every batch Kafka acknowledged, a checkpoint records the
    lines delivered; the same command resumes after them (and says "already
    backfilled" when nothing is left). Exit 0 when done, 1 on bad lines
    (without --skip-bad; with it, when no line at all was valid) or
    failures, 130 when interrupted.
    """
    if table is not None and table not in TABLES:
        raise typer.BadParameter(f"unknown table {table!r}; expected one of {', '.join(TABLES)}", param_hint="--table")
    # Every local check (inputs, paths, prefix) before Kafka is asked anything.
    job = ops.Backfill(files, topic_prefix=topic_prefix, table=table, checkpoint=checkpoint, report=report,
                       skip_bad=skip_bad, restart=restart, batch_lines=batch_lines)
    require_topics(reach_kafka(kafka, timeout), topic_prefix, kafka=kafka)
    cluster = admin_client(kafka).list_topics(timeout=timeout).cluster_id
    producer = SocietyProducer(ProducerSettings(
        kafka=kafka, topic_prefix=topic_prefix, client_id=f"{kafka.client_id}-backfill",
        extra={"logger": librdkafka_logger()},
    ))
    total = _lines_in(files) if err_console.is_terminal else None
    resume = f"run the same command again to resume (checkpoint {job.checkpoint_path})"
    try:
        with StopOnSignal() as stop, Progress("backfill", total) as bar:
            result = job.run(ops.ProducerSink(producer, cluster), stop, bar.advance)
    except KeyboardInterrupt:
        producer.abort()  # the batch in hand is not checkpointed: a resume sends it again
        fail(f"interrupted at once: {resume}", EXIT_INTERRUPTED)
    except BaseException:
        producer.abort()
        raise
    producer.close()
    if as_json:
        print_json(result.as_dict())
    elif result.state == ops.ALREADY_DONE:
        console.print(f"already backfilled: every line was delivered before ({sum(c.sent for c in result.totals.values()):,} "
                      f"records); nothing sent. Checkpoint {result.checkpoint}; --restart sends everything again.",
                      highlight=False)
    else:
        _summary(result)
    if result.state == ops.STOPPED:
        _stopped(result)
    if result.state == ops.NO_VALID_LINE:
        listed = f", listed in {result.report}" if result.report else ""
        fail(f"no valid line: nothing sent ({sum(c.skipped for c in result.totals.values()):,} bad line(s){listed})")
    if result.state == ops.INTERRUPTED:
        if result.was_complete and not result.sent:
            fail("interrupted while re-checking a finished backfill: nothing was sent (every line had been "
                 "delivered; run it again only to look for lines appended since)", EXIT_INTERRUPTED)
        file, delivered = result.position or ("?", 0)
        fail(f"interrupted: lines 1–{delivered:,} of {file} are delivered; {resume}", EXIT_INTERRUPTED)
