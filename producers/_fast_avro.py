"""Avro binary encoders specialized for our schemas' shapes.

fastavro is general; our records are flat: strings, ints, floats, UUID and
timestamp-micros logical types, arrays of strings, and ``["null", T]`` unions.
Closures built once per schema encode an agent memory in about two thirds of
fastavro's time (7 µs vs 11 µs on the project's 2-core machine), without
fastavro's per-call buffer setup. ``producers.codec`` uses them to encode the
current schema versions; decoding is fastavro's (a specialized decoder gained
about a fifth of the decode time, not worth a second Avro reader). The tests
check the bytes are identical to fastavro's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

Writer = Callable[[bytearray, Any], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


class UnsupportedSchema(Exception):
    """The schema uses a shape this encoder does not handle (fastavro does)."""


def _write_long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_string(out: bytearray, s: str) -> None:
    data = s.encode("utf-8")
    _write_long(out, len(data))
    out += data


def _write_uuid(out: bytearray, v: Any) -> None:
    _write_string(out, str(v))


def _write_timestamp(out: bytearray, v: datetime) -> None:
    _write_long(out, (v - _EPOCH) // _MICRO)


def _write_float(out: bytearray, v: float) -> None:
    out += _FLOAT.pack(v)


def _write_double(out: bytearray, v: float) -> None:
    out += _DOUBLE.pack(v)


def _write_boolean(out: bytearray, v: bool) -> None:
    out.append(1 if v else 0)


_PRIMITIVES: dict[Any, Writer] = {
    "string": _write_string,
    "int": _write_long,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "boolean": _write_boolean,
    ("string", "uuid"): _write_uuid,
    ("long", "timestamp-micros"): _write_timestamp,
}


def _array(write_item: Writer) -> Writer:
    def write(out: bytearray, values: list[Any]) -> None:
        if values:
            _write_long(out, len(values))
            for v in values:
                write_item(out, v)
        out.append(0)

    return write


def _nullable(write_inner: Writer) -> Writer:
    def write(out: bytearray, v: Any) -> None:
        if v is None:
            out.append(0)
        else:
            out.append(2)  # zigzag(1): the second branch
            write_inner(out, v)

    return write


def _writer_for(t: Any) -> Writer:
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return _PRIMITIVES[t]
    elif isinstance(t, list):
        if len(t) == 2 and t[0] == "null":
            return _nullable(_writer_for(t[1]))
    elif isinstance(t, dict):
        logical = t.get("logicalType")
        if logical is not None and (t.get("type"), logical) in _PRIMITIVES:
            return _PRIMITIVES[(t["type"], logical)]
        if t.get("type") == "array":
            return _array(_writer_for(t["items"]))
        if logical is None and t.get("type") in _PRIMITIVES:
            return _PRIMITIVES[t["type"]]
    raise UnsupportedSchema(f"unsupported Avro type {t!r}")


def record_encoder(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """encode(record) -> Avro binary payload, for a flat record schema."""
    if schema.get("type") != "record":
        raise UnsupportedSchema("not a record")
    writers = [(f["name"], _writer_for(f["type"])) for f in schema["fields"]]

    def encode(record: dict[str, Any]) -> bytes:
        out = bytearray()
        for name, write in writers:
            write(out, record.get(name))  # absent = None, as in fastavro
        return bytes(out)

    return encode
