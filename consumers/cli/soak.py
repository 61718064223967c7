"""``society-ingest soak``: a long run with one worker; memory, lag and reconciliation checked."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from consumers._deps import psycopg
from consumers._files import cannot_write_in
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Json, Timeout, console, fail, print_json, print_note, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka
from consumers.tools.proc_memory import rss_bytes
from consumers.tools.soak import DEFAULT_MAX_WORKER_GROWTH_MB, SoakSettings, run_soak, write_files
from consumers.tools.soak_figures import MB, Sample
from producers.kafka_config import KafkaClientSettings

#: Exit status when the run reconciled but a bound (worker memory, lag) was broken.
EXIT_BOUND_BROKEN = 4
#: Exit status after Ctrl-C or SIGTERM, as for a shell's interrupted command.
EXIT_INTERRUPTED = 130
#: At most one progress line this often.
PROGRESS_EVERY_S = 30.0


def _progress() -> Callable[[Sample], None]:
    last = [-PROGRESS_EVERY_S]

    def show(s: Sample) -> None:
        if s.seconds - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = s.seconds
        rss = lambda v: "-" if v is None else f"{v / MB:.0f} MB"  # noqa: E731
        print_note(f"soak {s.seconds:7.0f}s {s.phase:7} worker {rss(s.worker_rss)}, producer "
                   f"{rss(s.producer_rss)}, in Kafka {s.in_kafka:,}, loaded {s.committed:,}, lag {s.lag:,}")

    return show


@kafka_options
def soak(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    agents: Annotated[int, typer.Option(min=1, help="Agents of the synthetic society.")] = 2500,
    steps: Annotated[int, typer.Option(min=1, help="Steps (about 2.18 records per agent and step).")] = 1000,
    steps_per_second: Annotated[
        float, typer.Option(min=0, help="Pace of the producer, each step one burst; 0: flat out.")
    ] = 1.0,
    sample_seconds: Annotated[
        float, typer.Option(min=0.1, help="Sample both processes' RSS and the lag this often.")
    ] = 5.0,
    out: Annotated[
        Path | None,
        typer.Option(file_okay=False, show_default=False,
                     help="Folder for samples.csv, soak.png, summary.json and the logs (default soak-<UTC time>)."),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each topic.")] = 6,
    max_worker_growth: Annotated[
        float, typer.Option("--max-worker-growth-mb", min=0, help="Bound on the worker's RSS growth after warm-up.")
    ] = DEFAULT_MAX_WORKER_GROWTH_MB,
    drain_timeout: Annotated[
        float, typer.Option(min=1, help="Give up when the worker has not caught up this long after the producer.")
    ] = 900.0,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the soak's database and topics.")] = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Push a long run through the stack with one worker; sample RSS and lag; check it reconciles.

    The soak gets its own database (created on the server of --database-url,
    migrated, dropped afterwards) and topic prefix. Exit 0 when the run
    reconciled exactly and memory and lag stayed bounded, 1 when it did not
    reconcile (or could not finish), 4 when it reconciled but a bound was broken.
    """
    for value, flag in ((steps_per_second, "--steps-per-second"), (sample_seconds, "--sample-seconds"),
                        (max_worker_growth, "--max-worker-growth-mb"), (drain_timeout, "--drain-timeout")):
        if not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {value}", param_hint=flag)
    rss_bytes(os.getpid())  # /proc is there (Linux), before anything starts
    folder = out or Path(f"soak-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    _check_out(folder)
    db = database(database_url, timeout)
    with psycopg.connect(db, autocommit=True):  # the server answers, before anything is named or started
        pass
    reach_kafka(kafka, timeout)
    made = _make_out(folder)
    settings = SoakSettings(
        agents=agents, steps=steps, kafka=kafka, database_url=db, out=folder,
        steps_per_second=steps_per_second or None, sample_seconds=sample_seconds, partitions=partitions,
        drain_timeout_s=drain_timeout, max_worker_growth_mb=max_worker_growth, keep=keep,
    )
    started = time.monotonic()
    _interrupt_on_sigterm()
    print_note(f"soak: database and topic prefix {settings.name}, files in {folder}")
    left: list[list[str]] = []
    try:
        result = run_soak(settings, on_sample=_progress(), on_removed=left.append)
    except KeyboardInterrupt:
        if keep:
            done = f"{settings.name} kept"
        elif not left:
            done = f"the clean-up of {settings.name} did not finish"
        elif left[0]:
            done = f"{settings.name} removed except {'; '.join(left[0])}"
        else:
            done = f"{settings.name} removed"
        print_note(f"soak interrupted: worker and producer stopped, {done}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing started: no empty folder left behind
        raise
    write_files(result, folder)
    s = result.summary
    if as_json:
        print_json(s)
    else:
        _print(s, time.monotonic() - started)
    verdicts = s["verdicts"]
    if not verdicts["reconciled"]:
        fail(f"run {s['run_id']} did not reconcile: status {s['status']}, recorded {s['recorded']}, "
             f"loaded {s['loaded']}")
    broken = [name for name, ok in verdicts.items() if ok is False]
    if broken:
        fail(f"bound(s) broken: {', '.join(broken)} (see {folder / 'summary.json'})", EXIT_BOUND_BROKEN)


def _check_out(folder: Path) -> None:
    """Refuse now a --out the soak could not write its files in (nothing is created yet)."""
    if folder.is_symlink() and not folder.exists():
        raise typer.BadParameter(f"{folder} is a symbolic link to nothing: give a new or empty folder",
                                 param_hint="--out")
    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{folder} exists and is not a folder: give a new or empty folder",
                                 param_hint="--out")
    if folder.is_dir() and any(folder.iterdir()):
        raise typer.BadParameter(f"{folder} is not empty: give a new or empty folder (files there would be replaced)",
                                 param_hint="--out")


def _make_out(folder: Path) -> bool:
    """Create --out (when missing) and write a file in it, before the database and topics exist;
    return whether it was created here."""
    made = not folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise typer.BadParameter(f"cannot create folder {folder}: {e.strerror or e}", param_hint="--out") from None
    why = cannot_write_in(folder)
    if why is not None:
        if made:
            folder.rmdir()
        raise typer.BadParameter(f"cannot create a file in {folder}: {why}", param_hint="--out")
    return made


def _interrupt_on_sigterm() -> None:
    """SIGTERM (and SIGINT, even when a background shell ignores it) stop the soak as Ctrl-C does:
    both processes stopped, the scratch database and topics removed."""

    got: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        if not got:  # a second signal does not interrupt the clean-up
            got.append(signum)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _print(s: dict, wall_s: float) -> None:
    f = s["figures"]
    w, p, lag = f["worker"], f["producer"], f["lag"]
    mb = lambda v: "?" if v is None else f"{v:,.1f}"  # noqa: E731
    count = lambda v: "?" if v is None else f"{v:,}"  # noqa: E731
    print_table(
        f"soak of run {s['run_id']}: {s['agents']:,} agents × {s['steps']:,} steps",
        ["figure", "value"],
        [
            ["records produced / loaded", f"{s['records_produced']:,} / {s['records_loaded']:,}"],
            ["status --run", s["status"]],
            ["producing / until all loaded", f"{s['production_s']:,.0f} s / {s['duration_s']:,.0f} s "
                                             f"({s['records_per_s']:,} records/s)"],
            ["warm-up ends", f"{f['warmup_end_s']:,.0f} s"],
            ["worker RSS warm-up end → end (MB)", f"{mb(w['at_warmup_end'])} → {mb(w['at_end'])} "
                                                  f"({mb(w['growth'])}; peak {mb(w['peak_after_warmup'])}; "
                                                  f"{mb(w['slope_per_hour'])} MB/h)"],
            ["producer RSS warm-up end → end (MB)", f"{mb(p['at_warmup_end'])} → {mb(p['at_end'])} "
                                                    f"({mb(p['growth'])}; peak {mb(p['peak_after_warmup'])})"],
            ["lag max / after warm-up (records)", f"{lag['max']:,} / {lag['max_after_warmup']:,}"],
            ["lag max 1st / 2nd half of production, at its end",
             f"{count(lag['max_first_half'])} / {count(lag['max_second_half'])}, {lag['at_production_end']:,}"],
        ],
    )
    verdicts = ", ".join(f"{k} {'?' if v is None else ('yes' if v else 'NO')}" for k, v in s["verdicts"].items())
    console.print(f"{verdicts}; files in {Path(s['files']['summary']).parent} ({wall_s:,.0f} s in all)")
