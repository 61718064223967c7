"""Lines to records: strict JSON, the table of a line, derived ids, and reading the input files (plain or gzip).

A run or agent line without ``updated_at`` gets the backfill's start time
plus its position among all the lines of the inputs, in microseconds: a
later state of the same run or agent is always newer, so the worker keeps
the last one whatever its batches, and a resume gives every line the same
time again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

from consumers.backfill.errors import BackfillError
from producers import ids, tables
from producers._json import json_text
from producers.columns import COLUMNS
from producers.errors import InvalidRecordError

#: A longer line is bad without being read whole: bounds memory, far beyond any record Kafka
#: takes (1 MB by default, even with every character written as a 6-byte JSON escape).
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
#: Field name in a LineError for a line that is not a JSON object at all.
LINE: Final = "<line>"
#: Counts of lines whose table could not be told.
UNKNOWN_TABLE: Final = "?"

#: Columns the database generates, not in the records: surrogate keys (BIGSERIAL, see ddl/0001),
#: values computed from other columns (ddl/0008's search_vector) and load times (ddl/0009's loaded_at).
GENERATED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    tables.AGENT_MEMORIES: ("search_vector", "loaded_at"),
    tables.MARKET_TRANSACTIONS: ("transaction_id_pk", "loaded_at"),
    tables.BANKING_TRANSACTIONS: ("transaction_id_pk", "loaded_at"),
    tables.SIMULATION_EVENTS: ("event_id", "loaded_at"),
}
#: Client-side ids, derived when a line carries none.
DERIVED_ID: Final[dict[str, str]] = {tables.AGENT_MEMORIES: "memory_id", tables.SIMULATION_EVENTS: "event_uid"}

_NAMES: Final = {t: frozenset(c.name for c in cols) for t, cols in COLUMNS.items()}
JSONB_COLUMNS: Final = {t: tuple(c.name for c in cols if c.sql == "jsonb") for t, cols in COLUMNS.items()}
_TIMES: Final = {t: tuple(c.name for c in cols if c.avro == "timestamp-micros") for t, cols in COLUMNS.items()}
_REALS: Final = {t: frozenset(c.name for c in cols if c.avro in ("float", "double")) for t, cols in COLUMNS.items()}
#: Tables whose rows are states with an ``updated_at`` (filled when a line has none).
_STATES: Final = frozenset(t for t, d in tables.DECLARATIONS.items() if d.upsert)


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


class _NegativeZero(int):
    """JSON's ``-0``, which Python's int cannot tell from 0: 0 in an integer column, -0.0 in a REAL one."""


_NEGATIVE_ZERO: Final = _NegativeZero(0)


def _integer(text: str) -> int:
    return _NEGATIVE_ZERO if text == "-0" else int(text)


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

    def parse(self, raw: bytes, position: int = 0) -> tuple[str, dict[str, Any]] | None:
        """(table, record) of a line, None for a blank line; BadLine naming the field otherwise.

        `position` is the line's place among all the lines of the backfill (from 0): a run or agent
        without ``updated_at`` gets the start time plus that many microseconds.
        """
        if not raw.strip():
            return None
        try:
            text = raw.decode("utf-8")  # not stripped: byte and column numbers are the line's own
        except UnicodeDecodeError as e:
            raise BadLine(None, LINE, f"not valid UTF-8 (byte {e.start + 1})") from None
        try:
            obj = json.loads(text, parse_float=Decimal, parse_int=_integer, parse_constant=_reject_constant,
                             object_pairs_hook=_object)
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
        return table, self._converted(table, obj, position)

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

    def _converted(self, table: str, obj: dict[str, Any], position: int) -> dict[str, Any]:
        """JSON values as the producer takes them: jsonb as JSON text, numbers as floats (-0 too)."""
        for name in JSONB_COLUMNS[table]:
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
            elif value is _NEGATIVE_ZERO:
                obj[name] = -0.0 if name in _REALS[table] else 0
        if table in _STATES and obj.get("updated_at") is None:
            obj["updated_at"] = self._updated_at + timedelta(microseconds=position)
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


def _without_terminator(line: bytes) -> bytes:
    """A line without its terminator: the checkpoint's hash covers lines, not terminators, so a last
    line without a newline hashes the same once a newline and more lines are appended after it."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line


class InputLines:
    """The lines of one input file as (number, bytes), with a SHA-256 of the lines read so far.

    The hash covers each line's bytes without its terminator, then ``\\n``.
    """

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
            self.digest.update(_without_terminator(line))
            self.number += 1
            if self.number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                while True:  # the rest of the long line, read and hashed, not kept
                    rest = self._stream.readline(MAX_LINE_BYTES)
                    self.digest.update(_without_terminator(rest))
                    if not rest or rest.endswith(b"\n"):
                        break
            self.digest.update(b"\n")
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
            raise BackfillError(f"cannot read {self.path} after line {self.number}: {e or type(e).__name__}") from e
        return line


__all__ = [
    "DERIVED_ID", "GENERATED_COLUMNS", "GZIP_MAGIC", "JSONB_COLUMNS", "LINE", "MAX_LINE_BYTES", "UNKNOWN_TABLE",
    "BadLine", "InputLines", "LineError", "LineParser", "canonical_content", "derived_id", "invalid_reason",
]
