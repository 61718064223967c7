"""Pydantic models of the six records, one per table, validated at the call site.

Derived from each table's columns (``producers.columns``, read from its Avro
schema), so a record that validates here also fits its table: VARCHAR lengths,
INTEGER range, finite REAL values, declared ranges, no NUL characters
(PostgreSQL text cannot hold them), timezone-aware times, JSON that jsonb takes.
"""

from __future__ import annotations

import json
import operator
import re
import struct
import uuid
from datetime import datetime, timezone
from itertools import accumulate
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from producers import tables
from producers._json import MAX_DEPTH
from producers.codec import default_schema_dir, load_schema_versions
from producers.columns import COLUMNS, ColumnDef
from producers.errors import InvalidRecordError

#: Largest text we send in one record; Kafka's default message limit is 1 MiB.
MAX_TEXT_CHARS: Final = 100_000
#: Largest finite float4 (PostgreSQL REAL). A larger double may still round to it (3.4028235e38,
#: its shortest spelling, does): the range check is on the value rounded to float4.
REAL_MAX: Final = 3.4028234663852886e38
_FLOAT4: Final = struct.Struct("<f")
INT4_MAX: Final = 2**31 - 1
INT4_MIN: Final = -(2**31)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which PostgreSQL text cannot store")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(timezone.utc)
    except OverflowError as e:
        raise ValueError("is not representable in UTC") from e


def _number(value: Any) -> Any:
    # Strict numbers: bool and numeric strings are mistakes, ints are fine.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number (int or float)")
    try:
        return float(value)
    except OverflowError as e:
        raise ValueError("out of range for REAL (float4)") from e


def _real(value: float) -> float:
    # struct rounds to nearest float4 and raises OverflowError only when that is infinite.
    try:
        _FLOAT4.pack(value)
    except OverflowError:
        raise ValueError("out of range for REAL (float4)") from None
    return value


# \u0000 preceded by an even number of backslashes is a real escape, not "\\u0000".
_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON for PostgreSQL jsonb")


#: Deepest nesting of JSON text accepted: the converter's bound for JSON values (``producers._json``).
MAX_JSON_DEPTH: Final = MAX_DEPTH
#: An escape in a JSON string (\\" among them); each bracket as a step: +1 ("\x02" - 1) or -1, others dropped.
_JSON_ESCAPE = re.compile(r"\\.", re.S)
_STEPS = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_too_deep(text: str) -> bool:
    """Whether JSON `text` nests arrays and objects deeper than MAX_JSON_DEPTH.

    An explicit scan of the text (brackets outside strings, counted up and down), iterative: the
    answer never depends on the call stack, unlike json.loads' recursion limit. Run before parsing.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # cannot nest deeper than it has brackets
    if "\\" in text:
        text = _JSON_ESCAPE.sub("", text)
    outside = "".join(text.split('"')[::2])  # without escaped quotes, every other part is a string
    steps = outside.encode("utf-8", "surrogatepass").translate(_STEPS, _NOT_BRACKETS)
    # The depth after the i-th bracket: the sum of its steps (2 or 0) less i.
    return max(map(operator.sub, accumulate(steps), range(1, len(steps) + 1)), default=0) > MAX_JSON_DEPTH


#: The reason for JSON text too deep, the same on the producer and in the worker.
JSON_TOO_DEEP: Final = f"is nested deeper than {MAX_JSON_DEPTH} levels, which is not accepted"


def _json_text(value: str) -> str:
    # Stricter than json.loads: only what PostgreSQL's jsonb accepts.
    # Text with a raw lone surrogate never gets here (StrictStr refuses it), so one can only come
    # from a \u escape: the re-encoding that finds it runs only when the text has escapes.
    if json_too_deep(value):
        raise ValueError(JSON_TOO_DEEP)
    escaped = "\\u" in value
    try:
        parsed = json.loads(value, parse_constant=_reject_constant)
        if escaped:
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
    except RecursionError as e:
        raise ValueError("is nested too deeply") from e
    except UnicodeEncodeError as e:
        raise ValueError("contains a lone surrogate escape, which jsonb cannot store") from e
    except ValueError as e:
        raise ValueError(f"is not valid JSON text: {e}") from e
    if escaped and _JSON_NUL_ESCAPE.search(value):
        raise ValueError("contains a \\u0000 escape, which PostgreSQL jsonb cannot store")
    return value


def _ordered(value: Any) -> Any:
    # pydantic would list a set in hash order, which differs between processes:
    # a re-run would then send different tags for the same id (a conflict).
    if isinstance(value, (set, frozenset)):
        raise ValueError("a set has no order: pass a sorted list")
    return value


def _varchar(n: int) -> Any:
    return Annotated[StrictStr, Field(max_length=n), AfterValidator(_no_nul)]


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]
JsonText = Annotated[
    StrictStr, Field(max_length=MAX_TEXT_CHARS * 4), AfterValidator(_no_nul), AfterValidator(_json_text)
]
UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _text_type(column: ColumnDef) -> Any:
    if column.sql == "jsonb":
        return JsonText
    return Text if column.max_length is None else _varchar(column.max_length)


def _type_of(column: ColumnDef) -> Any:
    """The pydantic type of a column: its SQL type's limits, plus its declared range."""
    if column.avro == "uuid":
        return uuid.UUID
    if column.avro == "string":
        return _text_type(column)
    if column.avro == "int":
        low = INT4_MIN if column.minimum is None else max(INT4_MIN, column.minimum)
        high = INT4_MAX if column.maximum is None else min(INT4_MAX, column.maximum)
        return Annotated[StrictInt, Field(ge=low, le=high)]
    if column.avro in ("float", "double"):
        return Annotated[float, BeforeValidator(_number), Field(ge=column.minimum, le=column.maximum),
                         AfterValidator(_real)]
    if column.avro == "timestamp-micros":
        return UtcTime
    if column.avro == "array<string>":
        return Annotated[list[_text_type(column)], BeforeValidator(_ordered)]
    raise ValueError(f"{column.name}: no model type for Avro {column.avro}")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _model(table: str, columns: tuple[ColumnDef, ...]) -> type[_Record]:
    schema = SCHEMA_NAMES[table]
    fields: dict[str, Any] = {
        c.name: (_type_of(c) | None, None) if c.nullable else (_type_of(c), ...) for c in columns
    }
    model = create_model(schema, __base__=_Record, **fields)
    model.__doc__ = f"A {table} record, validated against its columns (from schemas/{table}/)."
    return model


#: Record name of each table's schema (the model's class name).
SCHEMA_NAMES: Final = {t: load_schema_versions(default_schema_dir())[t][-1].raw["name"] for t in tables.TABLES}

#: One model per table, derived from its current schema (``producers.columns``).
MODELS: Final[dict[str, type[_Record]]] = {t: _model(t, COLUMNS[t]) for t in tables.TABLES}


def validate_record(table: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate `data` as a `table` record; return the normalized field dict.

    Raises InvalidRecordError naming the first offending field and its value.
    """
    model = MODELS[table]
    try:
        instance = model.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = ".".join(str(part) for part in err["loc"]) or "<record>"
        value = None if err["type"] == "missing" else err.get("input")
        raise InvalidRecordError(table, field, value, err["msg"]) from e
    return dict(instance.__dict__)
