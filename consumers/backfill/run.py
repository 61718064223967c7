"""The backfill itself: batches read, validated whole, sent, acknowledged, then checkpointed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Final

from consumers.backfill.checkpoint import (
    Checkpoint, FileProgress, TableCounts, default_checkpoint, default_report, inputs_of, new_counts,
)
from consumers.backfill.errors import BackfillDeliveryError, BackfillError, CheckpointMismatchError
from consumers.backfill.lines import (
    JSONB_COLUMNS, LINE, MAX_LINE_BYTES, UNKNOWN_TABLE, BadLine, InputLines, LineError, LineParser, invalid_reason,
)
from consumers.backfill.sink import Sink
from producers import tables
from producers.codec import AvroCodec
from producers.errors import InvalidRecordError
from producers.models import validate_record
from producers.producer import RECORD_FRAMING_BYTES

#: Lines read, validated and sent together; the checkpoint advances once per batch. Large
#: enough that the flush and checkpoint per batch cost little, small enough that a bad line
#: or a kill holds back little.
BATCH_LINES: Final = 5_000
#: How much of a bad line the report keeps.
REPORT_RAW_CHARS: Final = 100_000
#: Bytes an Avro record may take beyond its line's own (header, ids and nulls a line leaves out).
_ENCODING_SLACK: Final = 256

#: How a backfill ended.
COMPLETE, ALREADY_DONE, STOPPED, INTERRUPTED = "complete", "already backfilled", "stopped", "interrupted"


@dataclass
class BackfillResult:
    """What one backfill invocation did (``totals``: all invocations of this checkpoint)."""

    state: str
    counts: dict[str, TableCounts]
    totals: dict[str, TableCounts]
    #: Lines found done in the checkpoint, not read again for sending.
    resumed_lines: int
    blank_lines: int
    derived_ids: int
    ignored_columns: dict[str, int]
    #: Bad lines: skipped ones (with skip_bad) or those of the batch that stopped the run.
    bad_lines: int
    #: The first bad lines (at most ``errors_kept``).
    errors: list[LineError]
    elapsed_s: float
    checkpoint: str
    report: str | None
    #: Where the run stopped: file and lines delivered in it.
    position: tuple[str, int] | None = None

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sent"] = self.sent
        out["records_per_s"] = self.sent / self.elapsed_s if self.elapsed_s > 0 else None
        for key in ("counts", "totals"):
            out[key] = {t: c for t, c in out[key].items() if t != UNKNOWN_TABLE or any(c.values())}
        return out


class Backfill:
    """One backfill of `files` into the topics of `topic_prefix`: ``Backfill(...).run()``."""

    def __init__(
        self,
        sink: Sink,
        files: Sequence[Path],
        *,
        topic_prefix: str,
        table: str | None = None,
        checkpoint: Path | None = None,
        report: Path | None = None,
        skip_bad: bool = False,
        restart: bool = False,
        batch_lines: int = BATCH_LINES,
        errors_kept: int = 1000,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        if not files:
            raise ValueError("no input files")
        if batch_lines < 1:
            raise ValueError("batch_lines must be at least 1")
        self._sink = sink
        self._files = [Path(f).resolve() for f in files]
        if len(set(self._files)) != len(self._files):
            raise BackfillError("an input file is given twice")
        self._inputs = inputs_of(self._files, table, topic_prefix)
        self.checkpoint_path = checkpoint or default_checkpoint(self._files, table, topic_prefix)
        self.report_path = report or default_report(self.checkpoint_path)
        self._table = table
        self._skip_bad = skip_bad
        self._restart = restart
        self._batch_lines = batch_lines
        self._errors_kept = errors_kept
        self._now = now
        self._codec = AvroCodec()
        self._report: IO[bytes] | None = None

    # -- the run ------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False, progress: Callable[[int], None] = lambda n: None
            ) -> BackfillResult:
        """Send every line not yet delivered; stop at a bad batch (unless skip_bad) or when `stop()` holds.

        `stop` is asked between batches (a signal handler's flag); `progress` gets the lines of each
        batch once delivered.
        """
        started = time.monotonic()
        state = self._load_state()
        was_complete, state.complete = state.complete, False
        parser = LineParser(self._table, datetime.fromisoformat(state.started_at))
        self._open_report(state)
        result = BackfillResult(
            state=COMPLETE, counts=new_counts(), totals=state.totals, resumed_lines=0, blank_lines=0,
            derived_ids=0, ignored_columns={}, bad_lines=0, errors=[], elapsed_s=0.0,
            checkpoint=str(self.checkpoint_path), report=None,
        )
        try:
            for path in self._files:
                ended = self._run_file(path, state, parser, result, stop, progress)
                if ended:
                    result.state = ended
                    break
            else:
                state.complete = True
                state.save(self.checkpoint_path)
                if was_complete and result.sent == 0 and result.bad_lines == 0:
                    result.state = ALREADY_DONE
        finally:
            if self._report is not None:
                self._report.close()
            result.elapsed_s = time.monotonic() - started
            result.ignored_columns = dict(parser.ignored)
            if self.report_path.exists() and self.report_path.stat().st_size:
                result.report = str(self.report_path)
        return result

    def _load_state(self) -> Checkpoint:
        existing = None if self._restart else Checkpoint.load(self.checkpoint_path)
        if existing is not None:
            if existing.inputs != self._inputs:
                raise CheckpointMismatchError(
                    f"checkpoint {self.checkpoint_path} belongs to another backfill ({_describe(existing.inputs)}; "
                    f"this one is {_describe(self._inputs)}): pass --restart to start over, "
                    "or --checkpoint to choose another file"
                )
            return existing
        state = Checkpoint.new(self._inputs, self._now())
        try:
            state.save(self.checkpoint_path)  # before anything is sent: the place must be writable
        except OSError as e:
            raise BackfillError(f"cannot write the checkpoint {self.checkpoint_path}: {e.strerror or e}; "
                                "pass --checkpoint PATH to keep it elsewhere") from e
        return state

    def _open_report(self, state: Checkpoint) -> None:
        """Cut the report to what the checkpoint covers (a fresh backfill starts an empty one)."""
        if self.report_path.exists():
            with self.report_path.open("r+b") as f:
                f.truncate(state.report_bytes)

    def _run_file(self, path: Path, state: Checkpoint, parser: LineParser, result: BackfillResult,
                  stop: Callable[[], bool], progress: Callable[[int], None]) -> str | None:
        done = state.files[str(path)]
        lines = InputLines(path)
        try:
            self._skip_done(lines, done, state, parser, result)
            while True:
                if stop():
                    result.position = (str(path), done.lines)
                    return INTERRUPTED
                batch = self._read_batch(lines)
                if not batch:
                    return None
                self._check_order(path, state)
                try:
                    sent = self._send_batch(path, batch, state, parser, result)
                except BackfillDeliveryError as e:
                    raise BackfillDeliveryError(
                        f"{e}; lines 1–{done.lines:,} of {path} are delivered (checkpoint {self.checkpoint_path}): "
                        "run the same command again to resume"
                    ) from e
                if not sent:
                    result.position = (str(path), done.lines)
                    return STOPPED
                done.lines = lines.number
                done.sha256 = lines.digest.hexdigest()
                state.derived_ids = parser.derived
                state.save(self.checkpoint_path)
                progress(len(batch))
        finally:
            lines.close()

    def _check_order(self, path: Path, state: Checkpoint) -> None:
        """Refuse new lines in a file after later files were started: derived ids count lines in file order."""
        later = self._files[self._files.index(path) + 1:]
        started = [str(f) for f in later if state.files[str(f)].lines]
        if started:
            raise CheckpointMismatchError(
                f"{path} has new lines, but the backfill went on to {started[0]} already: new lines belong in a "
                "new file (backfilled on its own), or pass --restart"
            )

    def _skip_done(self, lines: InputLines, done: FileProgress, state: Checkpoint, parser: LineParser,
                   result: BackfillResult) -> None:
        """Read past the lines the checkpoint counts as done, checking that they are unchanged."""
        count_ids = state.derived_ids > 0  # identical id-less lines later on are numbered after these
        ignored = parser.ignored.copy()  # the summary counts what this invocation sends
        while lines.number < done.lines:
            raw = lines.next()
            if raw is None:
                break
            if count_ids:
                try:
                    parser.parse(raw)
                except BadLine:
                    pass
        parser.ignored = ignored
        if lines.number != done.lines or lines.digest.hexdigest() != done.sha256:
            raise CheckpointMismatchError(
                f"{lines.path} changed in the {done.lines:,} line(s) checkpoint {self.checkpoint_path} counts as "
                "delivered: pass --restart to backfill it again from the start (the worker counts records "
                "already loaded as duplicates)"
            )
        result.resumed_lines += done.lines

    def _read_batch(self, lines: InputLines) -> list[tuple[int, bytes]]:
        batch = []
        while len(batch) < self._batch_lines:
            raw = lines.next()
            if raw is None:
                break
            batch.append((lines.number, raw))
        return batch

    def _send_batch(self, path: Path, batch: list[tuple[int, bytes]], state: Checkpoint, parser: LineParser,
                    result: BackfillResult) -> bool:
        """Validate the whole batch, then send and deliver it; False (nothing sent) on bad lines without skip_bad."""
        good: list[tuple[str, dict[str, Any]]] = []
        bad: list[LineError] = []
        derived = parser.derived
        for number, raw in batch:
            try:
                parsed = self._prepare(parser, raw)
            except BadLine as e:
                bad.append(LineError(str(path), number, e.table, e.field, e.reason, _shown(raw)))
                continue
            if parsed is None:
                result.blank_lines += 1
            else:
                good.append(parsed)
        for table, _ in good:
            result.counts[table].read += 1
        for e in bad:
            result.counts[e.table or UNKNOWN_TABLE].read += 1
        if bad:
            result.bad_lines += len(bad)
            result.errors.extend(bad[: max(0, self._errors_kept - len(result.errors))])
            self._write_report(bad)
            if not self._skip_bad:
                return False
        for table, fields in good:
            self._sink.send(table, fields)
        self._sink.deliver()
        # Delivered: count it, and cover its bad lines in the report the checkpoint points to.
        result.derived_ids += parser.derived - derived
        for table, _ in good:
            result.counts[table].sent += 1
            state.totals[table].read += 1
            state.totals[table].sent += 1
        for e in bad:
            result.counts[e.table or UNKNOWN_TABLE].skipped += 1
            state.totals[e.table or UNKNOWN_TABLE].read += 1
            state.totals[e.table or UNKNOWN_TABLE].skipped += 1
        if self._report is not None:
            self._report.flush()
            os.fsync(self._report.fileno())
            state.report_bytes = self._report.tell()
        return True

    def _prepare(self, parser: LineParser, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        """(table, validated fields) of a line, None for a blank one; BadLine otherwise."""
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise BadLine(None, LINE, f"longer than {MAX_LINE_BYTES:,} bytes")
        parsed = parser.parse(raw)
        if parsed is None:
            return None
        table, record = parsed
        try:
            fields = validate_record(table, record)
            self._check_size(table, fields, len(raw))
        except InvalidRecordError as e:
            raise BadLine(table, e.field, invalid_reason(e)) from None
        return table, fields

    def _check_size(self, table: str, fields: dict[str, Any], line_bytes: int) -> None:
        """InvalidRecordError when the record would exceed Kafka's message limit (``SocietyProducer.send`` would refuse it).

        A record's Avro encoding is smaller than its JSON line but for jsonb (re-encoded as
        ASCII JSON) and a few bytes of header and nulls, so only records near the limit are encoded.
        """
        limit = self._sink.max_message_bytes
        estimate = line_bytes + sum(len(fields[c] or "") for c in JSONB_COLUMNS[table]) + _ENCODING_SLACK
        if estimate + RECORD_FRAMING_BYTES <= limit:
            return
        key = tables.message_key(table, fields)
        size = len(self._codec.encode(table, fields)) + len(key.encode("utf-8")) + RECORD_FRAMING_BYTES
        if size > limit:
            raise InvalidRecordError(table, "<record>", None,
                                     f"encoded record is {size:,} bytes, over the {limit:,}-byte message limit")

    def _write_report(self, bad: list[LineError]) -> None:
        if self._report is None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            self._report = self.report_path.open("ab")
        self._report.write(b"".join(
            (json.dumps(asdict(e), ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace") for e in bad
        ))


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    return text if len(text) <= REPORT_RAW_CHARS else text[:REPORT_RAW_CHARS] + "…"


def _describe(inputs: dict[str, Any]) -> str:
    return (f"files {', '.join(inputs['files'])}, table {inputs['table'] or 'from each line'}, "
            f"topic prefix {inputs['topic_prefix']}")


__all__ = [
    "ALREADY_DONE", "BATCH_LINES", "COMPLETE", "INTERRUPTED", "REPORT_RAW_CHARS", "STOPPED", "Backfill",
    "BackfillResult",
]
