"""Avro single-object payloads straight to PostgreSQL binary COPY tuples, validated on the way.

For each fact table whose current schema these can read, one function is
generated (and compiled) once: it walks the Avro payload and appends each
column's COPY bytes in the table's column order, with no record dict, no
pydantic model and no Python value for most fields (text stays UTF-8 bytes,
a float's four bytes are read once). It accepts and rejects exactly what the
worker's general path (``AvroCodec.decode`` + ``validate_record`` + row
tuple) does, with the same error classes, the reason naming the field
(``tests/consumers/test_transcode.py`` checks this on random records):

- payloads that do not decode (truncated, bad varint or union branch, invalid
  UTF-8, a bad UUID, a time outside Python's datetime range, trailing bytes)
  raise ``MalformedRecordError``, as the codec does;
- values the models refuse (VARCHAR and text lengths in characters, NUL
  characters, int4 and declared ranges, NaN and infinities, JSON jsonb would
  not take) raise ``InvalidRecordError`` for the first such field, as
  ``validate_record`` does, once the whole payload decoded.

Other schema versions, tables and shapes are not transcoded (``for_table``
leaves them out); the worker decodes those the general way.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from consumers import copy_rows
from consumers.copy_rows import FACT_TABLES
from consumers.table_specs import INT4_MAX, INT4_MIN, RUN_COLUMN, SPECS
from producers._fast_avro import _read_long, uuid_of_text
from producers.codec import MAGIC, AvroCodec, SchemaVersion
from producers.columns import ColumnDef, column_of
from producers.errors import InvalidRecordError, MalformedRecordError
from producers.models import MAX_TEXT_CHARS, _json_text, json_too_deep, _no_nul, _reject_constant

#: transcode(value, kafka_timestamp_ms) -> (COPY tuple, parent key); see ``copy_rows.parent_key``.
Transcode = Callable[[bytes, "int | None"], tuple[bytes, bytes]]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
#: Microseconds since the Unix epoch that Python's datetime (years 1 to 9999) can hold.
_MIN_US: Final = (datetime(1, 1, 1, tzinfo=_UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_US: Final = (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=_UTC) - _EPOCH) // timedelta(microseconds=1)
#: Kafka timestamps the fast path converts itself (0 to year 9999); others take the general path.
_MAX_KAFKA_MS: Final = _MAX_US // 1000

_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_unhexlify = binascii.unhexlify
_FLOAT_LE = struct.Struct("<f").unpack_from
_DOUBLE_LE = struct.Struct("<d").unpack_from
_INVALID_JSON_LIMIT: Final = MAX_TEXT_CHARS * 4
_PACK_I4 = copy_rows.I4.pack
_PACK_ARRAY_HEADER = copy_rows.ARRAY_HEADER.pack
_ARRAY_HEADER_SIZE: Final = copy_rows.ARRAY_HEADER.size
_EMPTY_ARRAY_FIELD: Final = copy_rows.text_array([])


class Unsupported(Exception):
    """A schema shape the generated transcoders do not handle (the general path does)."""


def _uuid(s: bytes) -> bytes:
    """The 16 bytes of a UUID's text; canonical text quickly, the other forms the models accept as the codec
    reads them (``uuid_of_text``: never garbage that uuid.UUID would reinterpret)."""
    if len(s) == 36 and s[8] == s[13] == s[18] == s[23] == 45:  # "-"
        try:
            u = _unhexlify(s.replace(b"-", b""))  # hex digits only, unlike int(…, 16)
        except binascii.Error:
            pass
        else:
            if len(u) == 16:  # no other "-"
                return u
    return uuid_of_text(s.decode("utf-8")).bytes


def _text_problem(s: bytes, limit: int) -> tuple[str, str] | None:
    """(value, reason) when `s` has too many characters or a NUL, as the models word it; raises on bad UTF-8."""
    t = s.decode("utf-8")
    if len(t) > limit:
        return t, f"String should have at most {limit} characters"
    try:
        _no_nul(t)
    except ValueError as e:
        return t, f"Value error, {e}"
    return None


def _json_problem(s: bytes) -> tuple[str, str] | None:
    """(value, reason) when `s` is JSON text that jsonb (and the models) would refuse."""
    t = s.decode("utf-8")
    if b"\\u" not in s and not t.startswith("\ufeff") and not json_too_deep(t):
        # What ``_json_text`` does for text without \u escapes (json.loads, which also refuses
        # a BOM), minus making a decoder per call; any failure is worded by _json_text below,
        # which also refuses text nested too deeply (scanned first: never json's recursion limit).
        try:
            _JSON.decode(t)
        except (ValueError, RecursionError):
            pass
        else:
            return None
    try:
        _json_text(t)
    except ValueError as e:
        return t, f"Value error, {e}"
    return None


def _strings(b: bytes, i: int, end: int, limit: int) -> tuple[bytes, int, tuple[int, str, str] | None]:
    """An Avro array of strings at `i` as a COPY text[] field: (field, next i, first (index, value, reason)).

    The same bytes as ``copy_rows.text_array``, made in one pass.
    """
    if b[i] == 0:
        return _EMPTY_ARRAY_FIELD, i + 1, None
    parts: list[bytes] = [b"", b""]  # the field's length and the array header, once known
    size = _ARRAY_HEADER_SIZE
    problem = None
    while True:
        n, i = _read_long(b, i)  # once per block: the items' lengths below are read inline
        if n == 0:
            break
        if n < 0:  # a block with its size in bytes first
            n = -n
            _, i = _read_long(b, i)
        for _ in range(n):
            k = b[i]
            if k < 128:
                i += 1
                k = (k >> 1) ^ -(k & 1)
            else:
                k, i = _read_long(b, i)
            stop = i + k
            if k < 0 or stop > end:
                raise EOFError("string runs past the end of the payload")
            s = b[i:stop]
            i = stop
            if k > limit or not s.isascii() or 0 in s:
                p = _text_problem(s, limit)
                if p is not None and problem is None:
                    problem = (len(parts) // 2 - 1, *p)
            parts.append(_PACK_I4(k))
            parts.append(s)
            size += 4 + k
    parts[0] = _PACK_I4(size)
    parts[1] = _PACK_ARRAY_HEADER(1, 0, copy_rows.TEXT_OID, len(parts) // 2 - 1, 1)
    return b"".join(parts), i, problem


def _range_reason(value: Any, low: Any, high: Any) -> str:
    if low is not None and value < low:
        return f"Input should be greater than or equal to {low}"
    return f"Input should be less than or equal to {high}"


class _Source:
    """Lines of one generated function."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def add(self, *lines: str) -> None:
        self.lines.extend("    " * self.depth + line for line in lines)

    def varint(self, var: str) -> None:
        self.add(f"{var} = b[i]", f"if {var} < 128:", f"    i += 1", f"    {var} = ({var} >> 1) ^ -({var} & 1)",
                 "else:", f"    {var}, i = _long(b, i)")

    def string(self) -> None:
        """Read an Avro string's bytes into `s` (and its length into `n`)."""
        self.varint("n")
        self.add("e = i + n", "if n < 0 or e > L:", "    raise EOFError('string runs past the end of the payload')",
                 "s = b[i:e]", "i = e")


def _value(src: _Source, c: ColumnDef, k: int, consts: dict[str, Any]) -> None:
    """Code that reads column `c`'s (non-null) Avro value and appends its COPY field."""
    name = repr(c.name)
    if c.avro == "uuid":
        src.string()
        src.add(f"v{k} = _uuid(s)", "ap(_UUID_LEN)", f"ap(v{k})")
    elif c.avro == "string":
        limit = c.max_length or (_INVALID_JSON_LIMIT if c.sql == "jsonb" else MAX_TEXT_CHARS)
        src.string()
        src.add(f"v{k} = s", f"if n > {limit} or not s.isascii() or 0 in s:",
                f"    p = _text_problem(s, {limit})", "    if p is not None and bad is None:",
                f"        bad = ({name}, *p)")
        if c.sql == "jsonb":
            src.add("    elif p is None and bad is None:", "        p = _json_problem(s)",
                    "        if p is not None:", f"            bad = ({name}, *p)",
                    "elif bad is None:", "    p = _json_problem(s)", "    if p is not None:",
                    f"        bad = ({name}, *p)",
                    "ap(_I4(n + 1))", "ap(_JSONB_VERSION)", "ap(s)")
        else:
            src.add("ap(_I4(n))", "ap(s)")
    elif c.avro == "int":
        low = INT4_MIN if c.minimum is None else max(INT4_MIN, c.minimum)
        high = INT4_MAX if c.maximum is None else min(INT4_MAX, c.maximum)
        src.varint("v")
        src.add(f"if {low} <= v <= {high}:", "    ap(_LEN_INT4(4, v))", "else:", "    ap(b'')",
                "    if bad is None:", f"        bad = ({name}, v, _range_reason(v, {low}, {high}))")
    elif c.avro in ("float", "double"):
        size, unpack = (4, "_FLOAT_LE") if c.avro == "float" else (8, "_DOUBLE_LE")
        consts[f"_LOW{k}"], consts[f"_HIGH{k}"] = c.minimum, c.maximum
        src.add(f"v = {unpack}(b, i)[0]", f"i += {size}", "if v - v != 0.0:",
                f"    bad = bad or ({name}, v, 'Input should be a finite number')")
        if c.minimum is not None or c.maximum is not None:
            checks = []
            if c.minimum is not None:
                checks.append(f"v < _LOW{k}")
            if c.maximum is not None:
                checks.append(f"v > _HIGH{k}")
            src.add(f"elif {' or '.join(checks)}:",
                    f"    bad = bad or ({name}, v, _range_reason(v, _LOW{k}, _HIGH{k}))")
        src.add("try:", "    ap(_LEN_FLOAT4(4, v))", "except OverflowError:",  # a double beyond float4
                "    ap(b'')", f"    bad = bad or ({name}, v, 'Value error, out of range for REAL (float4)')")
    elif c.avro == "timestamp-micros":
        src.varint("v")
        src.add("if not _MIN_US <= v <= _MAX_US:", "    raise OverflowError('date value out of range')",
                "ap(_LEN_INT8(8, v - _PG_EPOCH_US))")
    elif c.avro == "array<string>":
        limit = c.max_length or MAX_TEXT_CHARS
        src.add(f"a, i, p = _strings(b, i, L, {limit})", "ap(a)", "if p is not None and bad is None:",
                f"    bad = (f'{c.name}.{{p[0]}}', p[1], p[2])")
    else:
        raise Unsupported(f"{c.name}: Avro {c.avro}")


def _nullable(field_type: Any) -> bool:
    if isinstance(field_type, list):
        if len(field_type) != 2 or field_type[0] != "null":
            raise Unsupported(f"union {field_type}")
        return True
    return False


def _generate(table: str, version: SchemaVersion) -> Transcode:
    spec = SPECS[table]
    fields = version.raw["fields"]
    if tuple(f["name"] for f in fields) != spec.column_names:
        raise Unsupported(f"{table} v{version.version}: fields are not the table's columns")
    run_column = RUN_COLUMN[table]
    consts: dict[str, Any] = {}
    src = _Source()
    src.add("L = len(b)", "bad = None", f"parts = [{copy_rows.I2.pack(len(fields))!r}]", "ap = parts.append",
            f"i = {len(MAGIC) + 8}", "try:")
    src.depth += 1
    for k, f in enumerate(fields):
        c = column_of(f)
        if c.name == "real_timestamp" and c.avro == "timestamp-micros" and c.nullable:
            # No event time sent: the Kafka timestamp, as the general path fills it in.
            src.add("t = b[i]", "if t == 0:", "    i += 1", "    if ts_ms is None:", "        ap(_NULL)",
                    "    else:", "        ap(_LEN_INT8(8, ts_ms * 1000 - _PG_EPOCH_US))", "elif t == 2:", "    i += 1")
        elif _nullable(f["type"]):
            src.add("t = b[i]", "if t == 0:", "    i += 1", "    ap(_NULL)", "elif t == 2:", "    i += 1")
        else:
            _value(src, c, k, consts)
            if c.name == run_column:
                src.add(f"run = v{k}")
            if c.name == spec.agent_column:
                src.add(f"agent = v{k}")
            continue
        if c.name in (run_column, spec.agent_column):
            raise Unsupported(f"{table}.{c.name}: a nullable parent column")
        src.depth += 1
        _value(src, c, k, consts)
        src.depth -= 1
        src.add("else:", "    raise ValueError(f'union branch {t} out of range')")
    src.depth -= 1
    prefix = f"corrupt {table} v{version.version} payload: "
    src.add("except Exception as x:  # IndexError, struct.error, UnicodeDecodeError, ValueError...",
            f"    raise _Malformed({prefix!r} + repr(x)) from x",
            "if i != L:", f"    raise _Malformed(f'{{L - i}} trailing bytes after the {table} payload')",
            "if bad is not None:", f"    raise _Invalid({table!r}, *bad)",
            f"return b''.join(parts), {'run + agent' if spec.agent_column else 'run'}")
    code = "def transcode(b, ts_ms):\n" + "\n".join(src.lines) + "\n"
    namespace: dict[str, Any] = {
        "_long": _read_long, "_uuid": _uuid, "_text_problem": _text_problem, "_json_problem": _json_problem,
        "_strings": _strings, "_range_reason": _range_reason, "_Malformed": MalformedRecordError,
        "_Invalid": InvalidRecordError, "_FLOAT_LE": _FLOAT_LE, "_DOUBLE_LE": _DOUBLE_LE,
        "_UUID_LEN": copy_rows.UUID_LEN, "_NULL": copy_rows.NULL, "_I4": copy_rows.I4.pack,
        "_JSONB_VERSION": copy_rows.JSONB_VERSION, "_LEN_INT4": copy_rows.LEN_INT4.pack,
        "_LEN_FLOAT4": copy_rows.LEN_FLOAT4.pack, "_LEN_INT8": copy_rows.LEN_INT8.pack,
        "_PG_EPOCH_US": copy_rows.PG_EPOCH_US, "_MIN_US": _MIN_US, "_MAX_US": _MAX_US, **consts,
    }
    exec(compile(code, f"<transcode {table} v{version.version}>", "exec"), namespace)  # noqa: S102 - our own code
    fn: Transcode = namespace["transcode"]
    fn.__doc__ = code  # the generated source, for a reader in a debugger
    return fn


class Transcoders:
    """The generated transcoder of each fact table's current schema version, by writer fingerprint."""

    def __init__(self, codec: AvroCodec) -> None:
        self._by_table: dict[str, dict[bytes, Transcode]] = {}
        for table in FACT_TABLES:
            current = codec.current[table]
            try:
                self._by_table[table] = {current.fingerprint: _generate(table, current)}
            except Unsupported:
                continue

    def for_table(self, table: str) -> Callable[[bytes, int | None], tuple[bytes, bytes] | None] | None:
        """transcode(value, kafka_ts_ms) for messages on `table`'s topic, or None when none was generated.

        It returns None for a message it does not handle (another schema version, not single-object
        encoding, a Kafka timestamp outside datetime's range): decode that one the general way.
        Raises MalformedRecordError or InvalidRecordError for a record to dead-letter.
        """
        by_fingerprint = self._by_table.get(table)
        if by_fingerprint is None:
            return None
        get = by_fingerprint.get
        magic = MAGIC

        def transcode(value: bytes, ts_ms: int | None) -> tuple[bytes, bytes] | None:
            fn = get(value[2:10])
            if fn is None or value[:2] != magic or ts_ms is not None and not 0 <= ts_ms <= _MAX_KAFKA_MS:
                return None
            return fn(value, ts_ms)

        return transcode
