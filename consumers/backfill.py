"""Backfill: records from newline-delimited JSON files, through the embedded producer's validation and encoding.

**Lines.** One JSON object per line (plain or gzip files; gzip is told by its
magic bytes, not by the name), whose keys are the table's column names
(``producers.columns.COLUMNS``, the seed's names). The table comes from
``table=`` (``--table``) or a ``"table"`` field on each line; a line naming
another table than ``--table`` is bad. Values in their JSON form: UUIDs and
timestamps as text (ISO 8601 with an offset), ``text[]`` as lists, jsonb
columns (``config_snapshot``, ``details``, ``record_counts``) as any JSON
value, except that a JSON *string* there is taken as JSON text (so the jsonb
string ``"a"`` is written ``"\\"a\\""``, and the jsonb ``null`` as ``"null"``).
JSON is read strictly: invalid UTF-8, NaN or Infinity, duplicate keys, a line
that is not an object, and unknown keys (named) make a bad line; numbers keep
their digits in jsonb (read as ``Decimal``). Blank lines are skipped. The
database-generated surrogate keys (``transaction_id_pk``, ``event_id``) are
not part of a record: they are ignored, and counted in the summary, so a dump
of the simulation's own tables loads as it is.

**Ids.** A memory or event without ``memory_id`` / ``event_uid`` gets a
UUIDv5 (``producers.ids.NAMESPACE``) of its table and its content (canonical
JSON: keys sorted, nulls dropped, no id), numbered by how often that same
content occurred before it in this backfill's inputs: re-running the same
files gives the same ids, and two identical lines still get two ids (the
counts take about 100 bytes of memory per distinct id-less content). Lines
that carry ids keep them. A run must carry its ``run_id`` (a backfill never
invents a run). A run or agent without ``updated_at`` gets the time the
backfill first started (kept in the checkpoint, so a resume sends the same).

**Batches and the checkpoint.** Lines are read in batches; each batch is
parsed and validated whole first (the same ``validate_record`` that
``SocietyProducer.send`` uses, then ``send`` itself). A bad line stops the
run before anything of its batch is sent, unless ``skip_bad``. A batch is
sent, flushed until Kafka acknowledged every record, and only then the
checkpoint is replaced atomically (temporary file, fsync, rename): per file
the lines done and a SHA-256 of exactly those lines' bytes, so a resume
continues after them only while they are unchanged (lines after them may be
fixed or appended). A kill between the acknowledgement and the checkpoint
write re-sends that one batch on resume: same records, same ids, which the
worker counts as duplicates, so PostgreSQL never holds a row twice.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final, Protocol

from consumers._files import write_atomically
from consumers.errors import ConsumerError
from producers import ids, tables
from producers._json import json_text
from producers.codec import AvroCodec
from producers.columns import COLUMNS
from producers.errors import DeliveryError, InvalidRecordError
from producers.models import validate_record
from producers.producer import RECORD_FRAMING_BYTES, SocietyProducer

#: Lines read, validated and sent together; the checkpoint advances once per batch. Large
#: enough that the flush and checkpoint per batch cost little, small enough that a bad line
#: or a kill holds back little.
BATCH_LINES: Final = 5_000
#: A longer line is bad without being read whole: bounds memory, far beyond any record Kafka
#: takes (1 MB by default, even with every character written as a 6-byte JSON escape).
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
#: How much of a bad line the report keeps.
REPORT_RAW_CHARS: Final = 100_000
GZIP_MAGIC: Final = b"\x1f\x8b"
CHECKPOINT_FORMAT: Final = "society-ingest backfill checkpoint"
CHECKPOINT_VERSION: Final = 1
#: Field name in a LineError for a line that is not a JSON object at all.
LINE: Final = "<line>"
#: Counts of lines whose table could not be told.
UNKNOWN_TABLE: Final = "?"

#: Surrogate keys the database generates (BIGSERIAL, see ddl/0001): not in the records.
GENERATED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    tables.MARKET_TRANSACTIONS: ("transaction_id_pk",),
    tables.BANKING_TRANSACTIONS: ("transaction_id_pk",),
    tables.SIMULATION_EVENTS: ("event_id",),
}
#: Client-side ids, derived when a line carries none.
DERIVED_ID: Final[dict[str, str]] = {tables.AGENT_MEMORIES: "memory_id", tables.SIMULATION_EVENTS: "event_uid"}

_NAMES: Final = {t: frozenset(c.name for c in cols) for t, cols in COLUMNS.items()}
_JSONB: Final = {t: tuple(c.name for c in cols if c.sql == "jsonb") for t, cols in COLUMNS.items()}
_TIMES: Final = {t: tuple(c.name for c in cols if c.avro == "timestamp-micros") for t, cols in COLUMNS.items()}
#: Tables whose rows are states with an ``updated_at`` (filled when a line has none).
_STATES: Final = frozenset(t for t, d in tables.DECLARATIONS.items() if d.upsert)
#: Bytes an Avro record may take beyond its line's own (header, ids and nulls a line leaves out).
_ENCODING_SLACK: Final = 256


class BackfillError(ConsumerError):
    """The backfill cannot go on; what was delivered is in the checkpoint, and the same command resumes."""


class CheckpointMismatchError(BackfillError):
    """The checkpoint belongs to other inputs, or the lines it counts as done have changed."""


class BackfillDeliveryError(BackfillError):
    """Kafka did not acknowledge a batch: the checkpoint stays before it."""


@dataclass(frozen=True, slots=True)
class LineError:
    """A bad line: where, which field, why."""

    file: str
    line: int
    table: str | None
    field: str
    reason: str
    raw: str

    def text(self) -> str:
        """``file:line: table.field: reason`` for people."""
        return f"{self.file}:{self.line}: {self.table or UNKNOWN_TABLE}.{self.field}: {self.reason}"


class BadLine(Exception):
    """Raised by ``LineParser.parse`` for a line that is not a record."""

    def __init__(self, table: str | None, field: str, reason: str) -> None:
        super().__init__(f"{table or UNKNOWN_TABLE}.{field}: {reason}")
        self.table = table
        self.field = field
        self.reason = reason


# -- lines -> records ---------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return obj


def _decimal_as_float(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def derived_id(table: str, canonical: str, occurrence: int) -> uuid.UUID:
    """Id of the `occurrence`-th (from 0) line of `table` whose content is `canonical` (see the module doc)."""
    base = uuid.uuid5(ids.NAMESPACE, f"backfill/{table}/{canonical}")
    return base if occurrence == 0 else uuid.uuid5(ids.NAMESPACE, f"backfill/{base}/{occurrence}")


def canonical_content(record: dict[str, Any], id_column: str) -> str:
    """A record's content as canonical JSON: sorted keys, no nulls, no id, compact."""
    content = {k: v for k, v in record.items() if v is not None and k != id_column}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=_decimal_as_float)


class LineParser:
    """Turns one NDJSON line into (table, record) for ``validate_record``; counts content for derived ids."""

    def __init__(self, table: str | None, updated_at: datetime) -> None:
        if table is not None and table not in _NAMES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(tables.TABLES)}")
        self._table = table
        self._updated_at = updated_at
        #: Occurrences so far of each id-less content (keyed by its occurrence-0 id).
        self._seen: dict[bytes, int] = {}
        #: Ids derived, and generated columns ignored (``table.column`` -> lines).
        self.derived = 0
        self.ignored: Counter[str] = Counter()

    def parse(self, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        """(table, record) of a line, None for a blank line; BadLine naming the field otherwise."""
        if not raw.strip():
            return None
        try:
            text = raw.decode("utf-8")  # not stripped: byte and column numbers are the line's own
        except UnicodeDecodeError as e:
            raise BadLine(None, LINE, f"not valid UTF-8 (byte {e.start + 1})") from None
        try:
            obj = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_object)
        except RecursionError:
            raise BadLine(None, LINE, "not valid JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError too
            reason = f"{e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else str(e)
            raise BadLine(None, LINE, f"not valid JSON: {reason}") from None
        if type(obj) is not dict:
            raise BadLine(None, LINE, f"{_kind(obj)} is not a JSON object")
        table = self._table_of(obj)
        for column in GENERATED_COLUMNS.get(table, ()):
            if column in obj:
                del obj[column]
                self.ignored[f"{table}.{column}"] += 1
        unknown = obj.keys() - _NAMES[table]
        if unknown:
            raise BadLine(table, min(unknown), f"not a column of {table}")
        id_column = DERIVED_ID.get(table)
        if id_column is not None and obj.get(id_column) is None:
            obj[id_column] = self._derive(table, obj, id_column)
        return table, self._converted(table, obj)

    def _table_of(self, obj: dict[str, Any]) -> str:
        named = obj.pop("table", None)
        if named is None:
            if self._table is None:
                raise BadLine(None, "table", 'no table: give --table or a "table" field on each line')
            return self._table
        if type(named) is not str or named not in _NAMES:
            raise BadLine(None, "table", f"unknown table {named!r}; expected one of {', '.join(tables.TABLES)}")
        if self._table is not None and named != self._table:
            raise BadLine(named, "table", f"the line is a {named} record, but --table is {self._table}")
        return named

    def _derive(self, table: str, obj: dict[str, Any], id_column: str) -> uuid.UUID:
        canonical = canonical_content(obj, id_column)
        first = derived_id(table, canonical, 0)
        n = self._seen.get(first.bytes, 0)
        self._seen[first.bytes] = n + 1
        self.derived += 1
        return first if n == 0 else derived_id(table, canonical, n)

    def _converted(self, table: str, obj: dict[str, Any]) -> dict[str, Any]:
        """JSON values as the producer takes them: jsonb as JSON text, numbers as floats."""
        for name in _JSONB[table]:
            value = obj.get(name)
            if value is not None and type(value) is not str:
                try:
                    obj[name] = json_text(value, table, name)
                except InvalidRecordError as e:
                    raise BadLine(table, name, e.reason) from None
        for name in _TIMES[table]:
            value = obj.get(name)
            if value is not None and type(value) is not str:
                raise BadLine(table, name, f"{_kind(value)} is not a time: write ISO 8601 text with an offset, "
                                           "e.g. 2024-05-01T12:00:00+00:00")
        for name, value in obj.items():
            if type(value) is Decimal:
                obj[name] = float(value)
        if table in _STATES and obj.get("updated_at") is None:
            obj["updated_at"] = self._updated_at
        return obj


def invalid_reason(e: InvalidRecordError) -> str:
    """The reason of a validation error without its ``table.field:`` prefix (the report has both apart)."""
    message = str(e)
    prefix = f"{e.table}.{e.field}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# -- input files ----------------------------------------------------------------

def _decompressed(f: IO[bytes]) -> IO[bytes]:
    """`f`, or a gzip reader over it when it starts with gzip's magic bytes (whatever the file's name)."""
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb") if magic == GZIP_MAGIC else f


class _InputLines:
    """The lines of one input file as (number, bytes), with a SHA-256 of every byte read so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw = path.open("rb")
        except OSError as e:
            raise BackfillError(f"cannot open {path}: {e.strerror or e}") from e
        self._stream = _decompressed(self._raw)
        self.digest = hashlib.sha256()
        self.number = 0  # lines read

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def next(self) -> bytes | None:
        """The next line (None at the end); a line over MAX_LINE_BYTES comes back cut at that length."""
        try:
            line = self._stream.readline(MAX_LINE_BYTES)
            if not line:
                return None
            self.digest.update(line)
            self.number += 1
            if self.number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                while True:  # the rest of the long line, read and hashed, not kept
                    rest = self._stream.readline(MAX_LINE_BYTES)
                    self.digest.update(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
            raise BackfillError(f"cannot read {self.path} after line {self.number}: {e or type(e).__name__}") from e
        return line


# -- the checkpoint -----------------------------------------------------------------

@dataclass
class TableCounts:
    """Lines of one table: read, sent (acknowledged by Kafka), skipped as bad."""

    read: int = 0
    sent: int = 0
    skipped: int = 0


def _new_counts() -> dict[str, TableCounts]:
    return {t: TableCounts() for t in (*tables.TABLES, UNKNOWN_TABLE)}


@dataclass
class FileProgress:
    """How far one input file was delivered: lines done and a SHA-256 of exactly those lines' bytes."""

    lines: int = 0
    sha256: str = hashlib.sha256().hexdigest()


@dataclass
class Checkpoint:
    """What a backfill delivered so far; written after every acknowledged batch."""

    inputs: dict[str, Any]
    started_at: str
    files: dict[str, FileProgress]
    #: Ids derived in the lines done (a resume re-reads them to number identical lines alike).
    derived_ids: int = 0
    #: Size of the report file covering the lines done (a resume cuts off what came after).
    report_bytes: int = 0
    complete: bool = False
    totals: dict[str, TableCounts] = field(default_factory=_new_counts)

    @classmethod
    def new(cls, inputs: dict[str, Any], started_at: datetime) -> Checkpoint:
        return cls(inputs, started_at.isoformat(), {f: FileProgress() for f in inputs["files"]})

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at `path`, or None when there is none; BackfillError when it is not one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise BackfillError(f"cannot read the checkpoint {path}: {e}; pass --restart to start over") from e
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise BackfillError(f"{path} is not a backfill checkpoint; pass --checkpoint to choose another file")
        if data.get("version") != CHECKPOINT_VERSION:
            raise BackfillError(f"checkpoint {path} has version {data.get('version')}, this society-ingest "
                                f"reads {CHECKPOINT_VERSION}; pass --restart to start over")
        try:
            return cls(
                inputs=data["inputs"],
                started_at=data["started_at"],
                files={f: FileProgress(**p) for f, p in data["files"].items()},
                derived_ids=data["derived_ids"],
                report_bytes=data["report_bytes"],
                complete=data["complete"],
                totals={t: TableCounts(**c) for t, c in data["totals"].items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise BackfillError(f"checkpoint {path} is damaged ({type(e).__name__}: {e}); "
                                "pass --restart to start over") from e

    def save(self, path: Path) -> None:
        """Replace the checkpoint at `path` atomically: a crash leaves the old one or the new one, whole."""
        data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **asdict(self),
                "written_at": datetime.now(timezone.utc).isoformat()}
        write_atomically(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


CHECKPOINT_SUFFIX: Final = ".checkpoint.json"
REPORT_SUFFIX: Final = ".bad.ndjson"


def default_checkpoint(files: Sequence[Path], table: str | None, topic_prefix: str) -> Path:
    """``<first file>.backfill-<hash of the arguments>.checkpoint.json``, beside the first file."""
    inputs = _inputs(files, table, topic_prefix)
    tag = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()[:10]
    first = Path(inputs["files"][0])
    return first.with_name(f"{first.name}.backfill-{tag}{CHECKPOINT_SUFFIX}")


def default_report(checkpoint: Path) -> Path:
    """The bad-line report beside a checkpoint: ``x.checkpoint.json`` -> ``x.bad.ndjson``."""
    name = checkpoint.name.removesuffix(CHECKPOINT_SUFFIX)
    return checkpoint.with_name(name + REPORT_SUFFIX)


def _inputs(files: Sequence[Path], table: str | None, topic_prefix: str) -> dict[str, Any]:
    return {"files": [str(Path(f).resolve()) for f in files], "table": table, "topic_prefix": topic_prefix}


# -- sending ---------------------------------------------------------------------

class Sink(Protocol):
    """Where validated records go: the embedded producer (``ProducerSink``), or a fake in unit tests."""

    max_message_bytes: int

    def send(self, table: str, fields: dict[str, Any]) -> None:
        """Validate, encode and enqueue one record."""

    def deliver(self) -> None:
        """Return once Kafka acknowledged every record sent; BackfillDeliveryError otherwise."""


#: How long one flush waits before Python gets to handle a signal (Ctrl-C).
FLUSH_SLICE_S: Final = 0.5


class ProducerSink:
    """A SocietyProducer as a backfill's sink: ``send`` is ``SocietyProducer.send`` (keys, encoding, checks)."""

    def __init__(self, producer: SocietyProducer) -> None:
        self._producer = producer
        self.max_message_bytes = producer.settings.max_message_bytes
        #: librdkafka gives a record up after message.timeout.ms; flushing longer cannot help.
        self._delivery_timeout_s = producer.settings.message_timeout_ms / 1000 + 5

    def send(self, table: str, fields: dict[str, Any]) -> None:
        self._producer.send(table, fields)

    def deliver(self) -> None:
        deadline = time.monotonic() + self._delivery_timeout_s
        while True:
            try:
                self._producer.flush(FLUSH_SLICE_S)  # in slices: a signal handler runs in between
                return
            except DeliveryError as e:
                if e.failures or time.monotonic() >= deadline:
                    raise BackfillDeliveryError(f"Kafka did not acknowledge the batch: {e}") from e


# -- the backfill ------------------------------------------------------------------

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
        self._inputs = _inputs(self._files, table, topic_prefix)
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
            state=COMPLETE, counts=_new_counts(), totals=state.totals, resumed_lines=0, blank_lines=0,
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
        lines = _InputLines(path)
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

    def _skip_done(self, lines: _InputLines, done: FileProgress, state: Checkpoint, parser: LineParser,
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

    def _read_batch(self, lines: _InputLines) -> list[tuple[int, bytes]]:
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
        estimate = line_bytes + sum(len(fields[c] or "") for c in _JSONB[table]) + _ENCODING_SLACK
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
    "BATCH_LINES", "Backfill", "BackfillDeliveryError", "BackfillError", "BackfillResult", "BadLine", "Checkpoint",
    "CheckpointMismatchError", "LineError", "LineParser", "ProducerSink", "Sink", "TableCounts",
    "canonical_content", "default_checkpoint", "default_report", "derived_id",
]
