"""PostgreSQL binary COPY tuples: the bytes one row takes in ``COPY … FROM STDIN (FORMAT BINARY)``.

A tuple is the field count (int16), then per column its length (int32, -1
for NULL) and its value in the type's binary send format. The worker loads
the fact tables from such bytes (``consumers.transcode`` makes them straight
from Avro); this module makes them from a row tuple (older schema versions,
replays, ``--no-validate``, tests) and turns them into staging-table tuples.
The caller writes the file header and trailer itself (psycopg's
``Copy.write`` sends raw data as it is).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

from consumers.table_specs import RUN_COLUMN, SPECS, TableSpec

#: Header of a binary COPY stream: signature, flags, header extension length.
SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
#: End of a binary COPY stream (a field count of -1).
TRAILER: Final = b"\xff\xff"
NULL: Final = b"\xff\xff\xff\xff"
#: Version byte of jsonb's binary format, before the JSON text.
JSONB_VERSION: Final = b"\x01"
TEXT_OID: Final = 25

#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_US: Final = 946_684_800 * 1_000_000
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)

I2 = struct.Struct("!h")
I4 = struct.Struct("!i")
LEN_INT4 = struct.Struct("!ii")
LEN_FLOAT4 = struct.Struct("!if")
LEN_INT8 = struct.Struct("!iq")
ARRAY_HEADER = struct.Struct("!iiIii")
EMPTY_ARRAY = struct.Struct("!iiI").pack(0, 0, TEXT_OID)
UUID_LEN: Final = I4.pack(16)

Encode = Callable[[Any], bytes]


def _text(v: str) -> bytes:
    data = v.encode("utf-8")
    return I4.pack(len(data)) + data


def _jsonb(v: str) -> bytes:
    data = v.encode("utf-8")
    return I4.pack(len(data) + 1) + JSONB_VERSION + data


def _timestamptz(v: datetime) -> bytes:
    delta = v - _PG_EPOCH
    return LEN_INT8.pack(8, delta.microseconds + 1_000_000 * (86_400 * delta.days + delta.seconds))


def text_array(items: list[bytes]) -> bytes:
    """A one-dimensional text[] of UTF-8 items (no NULLs), with its length prefix."""
    if not items:
        return I4.pack(len(EMPTY_ARRAY)) + EMPTY_ARRAY
    parts = [b"", ARRAY_HEADER.pack(1, 0, TEXT_OID, len(items), 1)]
    for item in items:
        parts.append(I4.pack(len(item)))
        parts.append(item)
    parts[0] = I4.pack(sum(len(p) for p in parts))
    return b"".join(parts)


_ENCODERS: Final[dict[str, Encode]] = {
    "uuid": lambda v: UUID_LEN + v.bytes,
    "text": _text,
    "int4": lambda v: LEN_INT4.pack(4, v),
    "float4": lambda v: LEN_FLOAT4.pack(4, v),
    "timestamptz": _timestamptz,
    "text[]": lambda v: text_array([s.encode("utf-8") for s in v]),
    "jsonb": _jsonb,
}


def row_encoder(spec: TableSpec) -> Callable[[tuple[Any, ...]], bytes]:
    """encode(row) -> the row's COPY tuple for ``spec``'s table (its column types)."""
    encoders = [_ENCODERS[c.table_type] for c in spec.columns]
    head = I2.pack(len(encoders))

    def encode(row: tuple[Any, ...]) -> bytes:
        return head + b"".join(NULL if v is None else enc(v) for enc, v in zip(encoders, row, strict=True))

    return encode


def parent_key(run_index: int, agent_index: int | None) -> Callable[[tuple[Any, ...]], bytes]:
    """key(row) -> the run's 16 UUID bytes, then the agent id's UTF-8 bytes for tables with stub agents."""
    if agent_index is None:
        return lambda row: row[run_index].bytes
    return lambda row: row[run_index].bytes + row[agent_index].encode("utf-8")


def fields(data: bytes) -> list[bytes | None]:
    """The column values of one COPY tuple (None for NULL)."""
    count = I2.unpack_from(data, 0)[0]
    out: list[bytes | None] = []
    i = 2
    for _ in range(count):
        n = I4.unpack_from(data, i)[0]
        i += 4
        if n < 0:
            out.append(None)
            continue
        out.append(data[i:i + n])
        i += n
    return out


def staged_encoder(spec: TableSpec) -> Callable[[bytes, int], bytes]:
    """stage(tuple, seq) -> the tuple for ``spec``'s staging table: jsonb columns as text, plus ``_seq``."""
    as_text = [c.table_type == "jsonb" and c.copy_type == "text" for c in spec.columns]
    head = I2.pack(len(as_text) + 1)

    def stage(data: bytes, seq: int) -> bytes:
        if not any(as_text):
            return head + data[2:] + LEN_INT4.pack(4, seq)
        parts = [head]
        for value, text in zip(fields(data), as_text, strict=True):
            if value is None:
                parts.append(NULL)
                continue
            if text:
                value = value[1:]  # the jsonb version byte
            parts.append(I4.pack(len(value)))
            parts.append(value)
        parts.append(LEN_INT4.pack(4, seq))
        return b"".join(parts)

    return stage


def _parent_key_of(spec: TableSpec) -> Callable[[tuple[Any, ...]], bytes]:
    run = spec.column_names.index(RUN_COLUMN[spec.name])
    agent = None if spec.agent_column is None else spec.column_names.index(spec.agent_column)
    return parent_key(run, agent)


#: The tables loaded from COPY tuples: the fact tables (runs and agents are upserted from row tuples).
FACT_TABLES: Final = tuple(t for t, s in SPECS.items() if not s.upsert)
#: Per fact table: row tuple -> COPY tuple.
ENCODE_ROW: Final = {t: row_encoder(SPECS[t]) for t in FACT_TABLES}
#: Per fact table: row tuple -> parent key (see ``parent_key``).
PARENT_KEY: Final = {t: _parent_key_of(SPECS[t]) for t in FACT_TABLES}
