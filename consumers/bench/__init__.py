"""``society-ingest bench``: the real shape of the work, measured in one run on scratch objects.

Modes (``BenchConfig.modes``): ``mix`` (pipeline with 1 and 2 worker processes
vs binary COPY, ``pipeline``), ``alternatives`` (INSERT per row, executemany,
multi-row VALUES, ``alternatives``), ``e2e`` (a paced society, latency and lag,
``end_to_end``) and ``producer`` (µs per call, ``producer_calls``). Everything
lives in a scratch database and scratch topics (``scratch``), removed at the end.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consumers.bench import alternatives, end_to_end, pipeline, producer_calls
from consumers.bench.report import Line, ModeResult, median
from consumers.bench.scratch import Scratch, leftovers
from producers.kafka_config import KafkaClientSettings

__all__ = ["MODES", "BenchConfig", "BenchReport", "Line", "leftovers", "run_bench"]

MODES = ("mix", "alternatives", "e2e", "producer")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and choices of a bench run (the CLI's flags)."""

    modes: tuple[str, ...] = MODES
    records: int = 1_000_000
    alt_records: int = 50_000
    agents: int = 2500
    repeats: int = 3
    processes: tuple[int, ...] = (1, 2)
    partitions: int = 6
    e2e_agents: int = 2500
    e2e_steps_per_s: float = 10.0
    e2e_seconds: float = 60.0
    e2e_producers: int = 2
    producer_records: int = 200_000
    keep: bool = False


@dataclass
class BenchReport:
    """Every sample per mode, the table's lines, and the scratch run's tag."""

    tag: str
    config: BenchConfig
    modes: dict[str, Any] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    #: Modes interrupted partway, of which ``modes`` holds what was measured before.
    partial: list[str] = field(default_factory=list)
    on_result: Any = field(default=None, repr=False)

    def add(self, mode: str, result: ModeResult) -> None:
        """Keep `mode`'s result."""
        self.modes[mode] = result.data
        self.lines += result.lines
        if result.partial:
            self.partial.append(mode)
        if self.on_result is not None:
            self.on_result(self)

    def as_json(self) -> dict[str, Any]:
        """Everything, for ``--json``."""
        return {"tag": self.tag, "config": asdict(self.config), "complete": set(self.modes) == set(self.config.modes) and not self.partial,
                "partial_modes": self.partial,
                "modes": self.modes,
                "table": [line.as_json() for line in self.lines]}


def run_bench(kafka: KafkaClientSettings, database_url: str, config: BenchConfig,
              on_start: Any = None, on_result: Any = None, on_removed: Any = None) -> BenchReport:
    """Run the chosen modes on a scratch database and scratch topics of `database_url`'s server and `kafka`.

    `on_start(tag)` is called once the scratch objects exist (to say what to clean up after a crash),
    `on_result(report)` after each mode (to keep what was measured if a later mode fails),
    `on_removed(line)` with what the clean-up removed.
    """
    with (Scratch(kafka, database_url, keep=config.keep, on_removed=on_removed) as scratch,
          tempfile.TemporaryDirectory() as logs_dir):
        if on_start is not None:
            on_start(scratch.tag)
        report, logs = BenchReport(scratch.tag, config, on_result=on_result), Path(logs_dir)
        source = None
        if {"mix", "alternatives"} & set(config.modes):
            records = config.records if "mix" in config.modes else config.alt_records + config.agents + 2
            source = pipeline.prefill(scratch, records, config.agents, config.partitions)
        rate = None
        if "mix" in config.modes:
            mix = pipeline.run(scratch, source, repeats=config.repeats, processes=config.processes, logs=logs,
                               on_partial=lambda partial: report.add("mix", partial))
            report.add("mix", mix)
            one = mix.data["samples_rows_per_s"].get("workers_1")
            rate = median(one) if one else None
        if "alternatives" in config.modes:
            report.add("alternatives", alternatives.run(scratch, source, records=config.alt_records,
                                                        repeats=config.repeats, pipeline_rate=rate))
        if "e2e" in config.modes:
            report.add("e2e", end_to_end.run(scratch, agents=config.e2e_agents, steps_per_s=config.e2e_steps_per_s,
                                             seconds=config.e2e_seconds, producers=config.e2e_producers,
                                             partitions=config.partitions, logs=logs))
        if "producer" in config.modes:
            report.add("producer", producer_calls.run(scratch, records=config.producer_records, agents=config.agents,
                                                      repeats=config.repeats, partitions=config.partitions))
        return report

