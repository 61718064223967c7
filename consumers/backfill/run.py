"""The backfill itself: batches read, validated whole, sent, acknowledged, then checkpointed."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from consumers.backfill.checkpoint import (
    CHECKPOINT_FORMAT, Checkpoint, CheckpointLock, FileProgress, TableCounts, default_checkpoint, default_report,
    inputs_of, new_counts, same_file, written_as,
)
from consumers.backfill.errors import BackfillDeliveryError, BackfillError, CheckpointMismatchError
from consumers.backfill.lines import (
    JSONB_COLUMNS, LINE, MAX_LINE_BYTES, UNKNOWN_TABLE, BadLine, InputLines, LineError, LineParser, invalid_reason,
)
from consumers.backfill.report import Report, shown
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
#: A batch ends early once its lines hold this many bytes: a batch is held whole (lines,
#: records, and their encodings in the producer's queue), so this bounds memory with large lines.
BATCH_BYTES: Final = 64 * 1024 * 1024
#: Lines delivered before are re-checked on resume in steps this long (progress, Ctrl-C).
CHECK_LINES: Final = 10_000
#: Bytes an Avro record may take beyond its line's own (header, ids and nulls a line leaves out).
_ENCODING_SLACK: Final = 256

#: How a backfill ended.
COMPLETE, ALREADY_DONE, STOPPED, INTERRUPTED = "complete", "already backfilled", "stopped", "interrupted"
#: Every line was read and every one was bad (skipped): nothing was ever sent.
NO_VALID_LINE: Final = "no valid line"


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
    #: The checkpoint said every line was delivered when this invocation started.
    was_complete: bool = False

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


def check_inputs(files: Sequence[Path]) -> list[Path]:
    """The input files, resolved; BackfillError for one that is not a regular file or is given twice.

    A resume re-reads the files from the start (to check the lines delivered and to number
    identical lines alike), which a pipe, a device or a process substitution cannot do.
    """
    resolved = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as e:
            raise BackfillError(f"cannot open {f}: {e.strerror or e}") from e
        if not stat.S_ISREG(st.st_mode):
            raise BackfillError(f"{f} is not a regular file: backfill reads regular files (it re-reads them to "
                                "resume); save the lines to a file first")
        resolved.append(Path(f).resolve())
    if len(set(resolved)) != len(resolved):
        raise BackfillError("an input file is given twice")
    return resolved


class Backfill:
    """One backfill of `files` into the topics of `topic_prefix`: ``Backfill(...).run(sink)``.

    The constructor checks the paths (the inputs are regular files; neither the checkpoint nor
    the report is one of them) without touching any file; ``run`` does the rest.
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        topic_prefix: str,
        table: str | None = None,
        checkpoint: Path | None = None,
        report: Path | None = None,
        skip_bad: bool = False,
        restart: bool = False,
        batch_lines: int = BATCH_LINES,
        batch_bytes: int = BATCH_BYTES,
        errors_kept: int = 1000,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        if not files:
            raise ValueError("no input files")
        if batch_lines < 1 or batch_bytes < 1:
            raise ValueError("batch_lines and batch_bytes must be at least 1")
        if not re.match(tables.TOPIC_PREFIX_PATTERN, topic_prefix):
            raise BackfillError(f"{topic_prefix!r} is not a topic prefix (letters, digits, . _ -)")
        self._files = check_inputs(files)
        self._inputs = inputs_of(self._files, table, topic_prefix)
        self.checkpoint_path = Path(checkpoint or default_checkpoint(self._files, table, topic_prefix)).absolute()
        self._report_option = Path(report).absolute() if report is not None else None
        #: The report's path; a resume takes the one its checkpoint names.
        self.report_path = self._report_option or default_report(self.checkpoint_path)
        self._refuse_input(self.checkpoint_path, "--checkpoint", "the checkpoint")
        self._refuse_input(self.report_path, "--report", "the bad-line report")
        if same_file(self.report_path, self.checkpoint_path):
            raise BackfillError(f"--report and --checkpoint are the same file ({self.report_path}): give them two")
        self._table = table
        self._skip_bad = skip_bad
        self._restart = restart
        self._batch_lines = batch_lines
        self._batch_bytes = batch_bytes
        self._errors_kept = errors_kept
        self._now = now
        self._codec = AvroCodec()

    def _refuse_input(self, path: Path, option: str, what: str) -> None:
        for f in self._files:
            if same_file(path, f):
                raise BackfillError(f"{what} would be written to {path}, which is an input file: the backfill "
                                    f"never writes its inputs; give {option} another path")

    # -- the run ------------------------------------------------------------------
    def run(self, sink: Sink, stop: Callable[[], bool] = lambda: False,
            progress: Callable[[int], None] = lambda n: None) -> BackfillResult:
        """Send every line not yet delivered to `sink`; stop at a bad batch (unless skip_bad) or when `stop()` holds.

        Holds the checkpoint's lock throughout (CheckpointInUseError when another backfill has
        it). `stop` is asked between batches and while the lines delivered before are checked (a
        signal handler's flag); `progress` gets the lines of each batch once delivered, and those
        found delivered before as they are checked.
        """
        with CheckpointLock(self.checkpoint_path):
            return self._run(sink, stop, progress)

    def _run(self, sink: Sink, stop: Callable[[], bool], progress: Callable[[int], None]) -> BackfillResult:
        started = time.monotonic()
        self._sink = sink
        state, fresh = self._load_state(sink.kafka_cluster)
        self._report = Report(self.report_path, self.checkpoint_path,
                              "pass --report PATH to keep it elsewhere" if fresh
                              else "pass --restart and --report PATH to start over with a report elsewhere")
        self._report.check()
        self._report.cut(state.report_bytes)
        if fresh:
            self._save(state, "nothing was sent; pass --checkpoint PATH to keep it elsewhere")
        was_complete, state.complete = state.complete, False
        parser = LineParser(self._table, datetime.fromisoformat(state.started_at))
        result = BackfillResult(
            state=COMPLETE, counts=new_counts(), totals=state.totals, resumed_lines=0, blank_lines=0,
            derived_ids=0, ignored_columns={}, bad_lines=0, errors=[], elapsed_s=0.0,
            checkpoint=str(self.checkpoint_path), report=None, was_complete=was_complete,
        )
        self._lines_before = 0  # lines of the files before the one being read (positions count all lines)
        try:
            for path in self._files:
                ended = self._run_file(path, state, parser, result, stop, progress)
                if ended:
                    result.state = ended
                    break
            else:
                state.complete = True
                self._save(state, "every line was delivered; run the same command again to record that")
                if not any(c.sent for c in state.totals.values()) and any(c.skipped for c in state.totals.values()):
                    result.state = NO_VALID_LINE
                elif was_complete and result.sent == 0 and result.bad_lines == 0:
                    result.state = ALREADY_DONE
        finally:
            self._report.close()
            result.elapsed_s = time.monotonic() - started
            result.ignored_columns = dict(parser.ignored)
            if self._report.written():
                result.report = str(self.report_path)
        return result

    def _load_state(self, kafka_cluster: str | None) -> tuple[Checkpoint, bool]:
        """The checkpoint to go on from, and whether it is a new one (not yet written)."""
        existing = None if self._restart else Checkpoint.load(self.checkpoint_path)
        if existing is None:
            if self._restart and self.checkpoint_path.exists() and self.checkpoint_path.stat().st_size and \
                    not written_as(self.checkpoint_path, CHECKPOINT_FORMAT):
                raise BackfillError(f"{self.checkpoint_path} is not a backfill checkpoint, so --restart does not "
                                    "replace it: give --checkpoint another path")
            return Checkpoint.new(self._inputs, self._now(), self.report_path, kafka_cluster), True
        if existing.inputs != self._inputs:
            raise CheckpointMismatchError(
                f"checkpoint {self.checkpoint_path} belongs to another backfill ({_describe(existing.inputs)}; "
                f"this one is {_describe(self._inputs)}): pass --restart to start over, "
                "or --checkpoint to choose another file"
            )
        if existing.kafka_cluster != kafka_cluster:
            raise CheckpointMismatchError(
                f"checkpoint {self.checkpoint_path} records lines delivered to Kafka cluster {existing.kafka_cluster}, "
                f"but these brokers are cluster {kafka_cluster}: pass --restart to send every line to this one, "
                "or --checkpoint for a backfill of its own"
            )
        report = Path(existing.report)
        if self._report_option is not None and not same_file(self._report_option, report):
            raise CheckpointMismatchError(
                f"checkpoint {self.checkpoint_path} lists bad lines in {report}, not {self._report_option}: "
                "leave --report out to resume, or pass --restart to start over with the new report"
            )
        self.report_path = report
        self._refuse_input(report, "--report", "the bad-line report")
        return existing, False

    def _save(self, state: Checkpoint, then: str) -> None:
        """Write the checkpoint; BackfillError saying what was delivered (`then`) when it cannot be written."""
        try:
            state.save(self.checkpoint_path)
        except OSError as e:
            raise BackfillError(f"cannot write the checkpoint {self.checkpoint_path}: {e.strerror or e}; {then}") from e

    def _run_file(self, path: Path, state: Checkpoint, parser: LineParser, result: BackfillResult,
                  stop: Callable[[], bool], progress: Callable[[int], None]) -> str | None:
        done = state.files[str(path)]
        lines = InputLines(path)
        try:
            if not self._skip_done(lines, done, state, parser, result, stop, progress):
                result.position = (str(path), done.lines)
                return INTERRUPTED
            while True:
                batch = self._read_batch(lines)
                if not batch:
                    self._lines_before += lines.number
                    return None
                if stop():  # only now: a stop after the last batch leaves nothing to resume
                    result.position = (str(path), done.lines)
                    return INTERRUPTED
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
                first, done.lines = done.lines + 1, lines.number
                done.sha256 = lines.digest.hexdigest()
                state.derived_ids = parser.derived
                self._save(state, f"lines {first:,}–{done.lines:,} of {path} were sent and acknowledged, so the "
                                  "resume sends them again (PostgreSQL still holds each row once): make the "
                                  "checkpoint writable and run the same command again")
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
                   result: BackfillResult, stop: Callable[[], bool], progress: Callable[[int], None]) -> bool:
        """Read past the lines the checkpoint counts as done, checking that they are unchanged; False if stopped."""
        count_ids = state.derived_ids > 0  # identical id-less lines later on are numbered after these
        ignored = parser.ignored.copy()  # the summary counts what this invocation sends
        try:
            while lines.number < done.lines:
                raw = lines.next()
                if raw is None:
                    break
                if count_ids:
                    try:
                        parser.parse(raw)
                    except BadLine:
                        pass
                if lines.number % CHECK_LINES == 0:
                    progress(CHECK_LINES)
                    if stop():
                        return False
            progress(lines.number % CHECK_LINES)
        finally:
            parser.ignored = ignored
        if lines.number != done.lines or lines.digest.hexdigest() != done.sha256:
            raise CheckpointMismatchError(
                f"{lines.path} changed in the {done.lines:,} line(s) checkpoint {self.checkpoint_path} counts as "
                "delivered: pass --restart to backfill it again from the start (the worker counts records "
                "already loaded as duplicates)"
            )
        result.resumed_lines += done.lines
        return True

    def _read_batch(self, lines: InputLines) -> list[tuple[int, bytes]]:
        """The next lines, up to ``batch_lines`` of them or ``batch_bytes`` (whichever comes first)."""
        batch = []
        size = 0
        while len(batch) < self._batch_lines and size < self._batch_bytes:
            raw = lines.next()
            if raw is None:
                break
            batch.append((lines.number, raw))
            size += len(raw)
        return batch

    def _send_batch(self, path: Path, batch: list[tuple[int, bytes]], state: Checkpoint, parser: LineParser,
                    result: BackfillResult) -> bool:
        """Validate the whole batch, then send and deliver it; False (nothing sent) on bad lines without skip_bad."""
        good: list[tuple[str, dict[str, Any]]] = []
        bad: list[LineError] = []
        derived = parser.derived
        for number, raw in batch:
            try:
                parsed = self._prepare(parser, raw, self._lines_before + number - 1)
            except BadLine as e:
                bad.append(LineError(str(path), number, e.table, e.field, e.reason, shown(raw)))
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
            self._report.write(bad)
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
        size = self._report.sync()
        if size is not None:
            state.report_bytes = size
        return True

    def _prepare(self, parser: LineParser, raw: bytes, position: int) -> tuple[str, dict[str, Any]] | None:
        """(table, validated fields) of the line at `position` (from 0, over all inputs), None for a blank one;
        BadLine otherwise."""
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise BadLine(None, LINE, f"longer than {MAX_LINE_BYTES:,} bytes")
        parsed = parser.parse(raw, position)
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


def _describe(inputs: dict[str, Any]) -> str:
    return (f"files {', '.join(inputs['files'])}, table {inputs['table'] or 'from each line'}, "
            f"topic prefix {inputs['topic_prefix']}")


__all__ = [
    "ALREADY_DONE", "BATCH_BYTES", "BATCH_LINES", "COMPLETE", "INTERRUPTED", "NO_VALID_LINE",
    "STOPPED", "Backfill", "BackfillResult", "check_inputs",
]
