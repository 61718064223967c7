"""Validate-and-encode in one pass, for the ``record_*`` calls' usual arguments.

The pydantic models (``producers.models``) are the reference: they define what
a record may hold and how it is normalized. For each table this module builds,
from the same column definitions (``producers.columns``), one function that
checks the arguments of the common shapes (exact ``str``, ``int``, ``float``,
``list`` of ``str``, ``None``, UTC ``datetime``, JSON text) against the same
limits and writes the Avro payload in the same pass. It accepts a subset of
what the model accepts and encodes it to the very bytes the model and the codec
would give; anything else (a wrong or unusual type, a value out of range, a
lone surrogate...) returns None, and the caller takes the reference path,
which accepts it or raises the model's own error. Property tests
(``tests/producers/test_fast_records.py``) hold both to that.

The functions are generated source (like ``dataclasses`` builds ``__init__``):
one straight block of checks and writes per column, no per-field calls.
Parameters are the table's fields in schema order, except:

- the run column takes its text pre-encoded (the producer's current run,
  validated when the run started);
- a derived id that is the schema's first field (memory and event ids) is not
  a parameter: the payload starts after it (``derived=``), since the id is
  numbered only once the record validated;
- ``now=`` columns are filled with the current time when None (event time).
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from producers import tables
from producers._json import LAST_PLAIN
from producers.codec import default_schema_dir, load_schema_versions
from producers.columns import COLUMNS, ColumnDef
from producers.models import MAX_TEXT_CHARS, _json_text

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)

#: Fingerprint of each table's current schema in ``schemas/``: the one these encoders write.
DEFAULT_FINGERPRINTS = {t: vs[-1].fingerprint for t, vs in load_schema_versions(default_schema_dir()).items()}


def _long(n: int) -> bytes:
    """Avro long: zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Avro encodings of the longs 0 <= n < _SMALL: string lengths and most steps.
_SMALL = 16384
_LONGS = tuple(_long(n) for n in range(_SMALL))
#: 14 bits of a varint as its two 7-bit groups, both with the continuation bit (middle of a varint).
_MIDDLE14 = tuple(bytes(((x & 0x7F) | 0x80, (x >> 7) | 0x80)) for x in range(1 << 14))
#: The last 14 bits of an 8-byte varint: a continued group, then the final one.
_LAST14 = tuple(bytes(((x & 0x7F) | 0x80, x >> 7)) for x in range(1 << 14))


def _micros(n: int) -> bytes:
    """Avro long of a timestamp-micros: table lookups for 1970 to about 3111 (an 8-byte varint)."""
    if 0 <= n < 1 << 55 and n >> 48:  # zigzag(n) = 2n has 50 to 56 bits: 8 bytes
        z = n << 1
        return _MIDDLE14[z & 0x3FFF] + _MIDDLE14[(z >> 14) & 0x3FFF] + _MIDDLE14[(z >> 28) & 0x3FFF] + _LAST14[z >> 42]
    return _long(n)


def now_micros() -> int:
    """Microseconds since the epoch, now (an Avro timestamp-micros)."""
    return time.time_ns() // 1000


_NAMESPACE: dict[str, Any] = {
    "_LONGS": _LONGS, "_SMALL": _SMALL, "_long": _long, "_micros": _micros, "_now": now_micros, "_datetime": datetime,
    "_UTC": timezone.utc, "_EPOCH": _EPOCH, "_MICRO": _MICRO, "_json_text": _json_text,
    "_F32": struct.Struct("<f").pack, "_F64": struct.Struct("<d").pack, "_UUID": uuid.UUID, "_LAST_PLAIN": LAST_PLAIN,
}


def _len_prefixed(var: str) -> list[str]:
    return [f"b = {var}.encode()", "n = len(b)", "out += _LONGS[n] if n < _SMALL else _long(n)", "out += b"]


def _text(var: str, limit: int, json: bool = False) -> list[str]:
    lines = [f"if type({var}) is not str or len({var}) > {limit} or '\\x00' in {var}: return None"]
    if json:  # ValueError: not JSON that jsonb takes; the converter's own plain output is
        lines.append(f"if {var} is not _LAST_PLAIN[0]: _json_text({var})")
    return lines + _len_prefixed(var)


def _int(var: str, low: int, high: int) -> list[str]:
    return [
        f"if type({var}) is not int or not {low} <= {var} <= {high}: return None",
        f"out += _LONGS[{var}] if 0 <= {var} < _SMALL else _long({var})",
    ]


def _real(var: str, c: ColumnDef) -> list[str]:
    lines = [
        f"if type({var}) is not float:",
        f"    if type({var}) is not int: return None",
        f"    {var} = float({var})",  # OverflowError: too large for a double
        f"if {var} - {var}: return None",  # NaN or an infinity
    ]
    if c.minimum is not None:
        lines.append(f"if {var} < {c.minimum!r}: return None")
    if c.maximum is not None:
        lines.append(f"if {var} > {c.maximum!r}: return None")
    # struct raises OverflowError when a double rounds to an infinite float4 (as the model's check).
    return lines + [f"out += {'_F32' if c.avro == 'float' else '_F64'}({var})"]


def _timestamp(var: str, now: bool) -> list[str]:
    lines = [f"if {var} is None: {var} = _now()", "else:"] if now else []
    pad = "    " if now else ""
    return lines + [
        f"{pad}if type({var}) is not _datetime or {var}.tzinfo is not _UTC: return None",
        f"{pad}{var} = ({var} - _EPOCH) // _MICRO",
        f"out += _micros({var})",
    ]


def _tags(var: str, limit: int) -> list[str]:
    return [
        f"if type({var}) is not list: return None",
        f"if {var}:",
        f"    out += _LONGS[len({var})] if len({var}) < _SMALL else _long(len({var}))",
        f"    for s in {var}:",
        *("        " + line for line in _text("s", limit)),
        "out += b'\\x00'",
    ]


def _column(c: ColumnDef, var: str, now: bool) -> list[str]:
    """Checks and writes of one column's value, held in `var` (without the union branch)."""
    if c.avro == "string":
        limit = MAX_TEXT_CHARS * 4 if c.sql == "jsonb" else c.max_length or MAX_TEXT_CHARS
        return _text(var, limit, json=c.sql == "jsonb")
    if c.avro == "int":
        low = -(2**31) if c.minimum is None else max(-(2**31), int(c.minimum))
        high = 2**31 - 1 if c.maximum is None else min(2**31 - 1, int(c.maximum))
        return _int(var, low, high)
    if c.avro in ("float", "double"):
        return _real(var, c)
    if c.avro == "timestamp-micros":
        return _timestamp(var, now)
    if c.avro == "array<string>":
        return _tags(var, c.max_length or MAX_TEXT_CHARS)
    if c.avro == "uuid":
        return [f"if type({var}) is not _UUID: return None", "out += b'H'", f"out += str({var}).encode()"]
    raise ValueError(f"{c.name}: no fast encoder for Avro {c.avro}")


def _field(c: ColumnDef, var: str, *, run: bool, now: bool) -> list[str]:
    if run:
        return [f"out += {var}"]  # the run id's Avro string, encoded once per run
    body = _column(c, var, now)
    if not c.nullable:
        return body
    if now:  # filled when None: never null
        return ["out += b'\\x02'", *body]
    return [f"if {var} is None:", "    out += b'\\x00'", "else:", "    out += b'\\x02'", *("    " + b for b in body)]


def record_encoder(
    columns: tuple[ColumnDef, ...], *, run_column: str, derived: str | None = None, now: tuple[str, ...] = ()
) -> Callable[..., bytes | None]:
    """fn(fields in schema order) -> Avro payload, or None to take the reference path (see the module doc)."""
    if derived is not None and columns[0].name != derived:
        raise ValueError(f"the derived id {derived} must be the first field")
    fields = columns[1:] if derived is not None else columns
    params = [f"v_{c.name}" for c in fields]
    body = ["out = bytearray()", "try:"]
    for c, var in zip(fields, params):
        body += ["    " + line for line in _field(c, var, run=c.name == run_column, now=c.name in now)]
    body += ["except (ValueError, OverflowError):", "    return None", "return bytes(out)"]
    source = f"def encode({', '.join(params)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace = dict(_NAMESPACE)
    exec(compile(source, f"<fast encoder of {columns[0].name}...>", "exec"), namespace)  # noqa: S102
    encode: Callable[..., bytes | None] = namespace["encode"]
    encode.__doc__ = source
    return encode


#: What each record_* call derives or fills: (its table's derived id or None, the event-time column
#: filled with the current time when None).
CALLS: dict[str, tuple[str | None, str]] = {
    tables.AGENTS: (None, "updated_at"),
    tables.AGENT_MEMORIES: ("memory_id", "real_timestamp"),
    tables.MARKET_TRANSACTIONS: (None, "real_timestamp"),
    tables.BANKING_TRANSACTIONS: (None, "real_timestamp"),
    tables.SIMULATION_EVENTS: ("event_uid", "real_timestamp"),
}
#: The record_* calls' encoders, by table.
ENCODERS = {
    t: record_encoder(COLUMNS[t], run_column=tables.DECLARATIONS[t].run_column, derived=derived, now=(now,))
    for t, (derived, now) in CALLS.items()
}
