"""The one converter from simulation values to JSON text, for the jsonb columns.

``details`` (events) and ``config_snapshot`` (runs) accept JSON-representable
values on the typed SocietyProducer and on the drop-in handler alike, through
``json_text``. Besides JSON's own types (dict, list, str, int, finite float,
bool, None) it converts, and only these:

- enum members -> their value (converted in turn),
- numpy scalars -> Python numbers; numpy arrays and tuples -> lists,
- datetime / date / time -> ISO 8601 text (``isoformat()``),
- UUID -> text,
- dataclass instances and pydantic models -> dicts of their fields,
- finite Decimal -> a JSON number with the same digits,
- dict keys: str as is; int, float, bool and enum keys become text the way
  ``json.dumps`` writes them (``1`` -> ``"1"``, ``True`` -> ``"true"``).

Anything else raises InvalidRecordError naming the field and the path inside
it (``simulation_events.details: NaN is not valid JSON at details["price"]``):
bytes, sets (no order), NaN and infinities, numpy datetimes, other key types,
two keys that become the same text, cycles, nesting deeper than MAX_DEPTH,
and arbitrary objects. Nothing is silently changed or dropped. The text is
what ``json.dumps(value, separators=(",", ":"))`` writes for plain JSON values,
so records sent by earlier versions compare equal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from pydantic import BaseModel

from producers.errors import InvalidRecordError

#: Deepest nesting of dicts and lists accepted (the root container is level 1);
#: deeper values are almost certainly a mistake, and bounding it keeps the
#: converter (and PostgreSQL's jsonb parser) far from any recursion limit.
MAX_DEPTH: Final = 100

_HINTS: Final = {
    bytes: "bytes are not valid JSON (decode them to str first)",
    bytearray: "bytes are not valid JSON (decode them to str first)",
    memoryview: "bytes are not valid JSON (decode them to str first)",
    set: "a set is not valid JSON (it has no order: pass a sorted list)",
    frozenset: "a set is not valid JSON (it has no order: pass a sorted list)",
}


class _Unrepresentable(Exception):
    """Raised at the offending value; each enclosing container adds its step to the path."""

    def __init__(self, reason: str, value: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value
        self.path: list[str] = []  # innermost first


#: PostgreSQL's numeric (which jsonb numbers are): digits before and after the decimal point.
NUMERIC_MAX_INTEGER_DIGITS = 131_072
NUMERIC_MAX_FRACTION_DIGITS = 16_383


def _int(value: int) -> str:
    try:
        return int.__repr__(value)
    except ValueError:  # Python's int-to-text limit (4,300 digits by default)
        raise _Unrepresentable(f"an integer of about {value.bit_length() * 0.30103:.0f} digits is too long", value) from None


#: Nesting the plain-value check follows (deeper values take the general converter).
_PLAIN_DEPTH: Final = 16



def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not plain JSON")  # never: only plain values get here


# json's C encoder, made once (JSONEncoder.encode makes one per call); pure Python where it is missing.
_C_ENCODER: Final = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _no_default, encode_basestring_ascii, None, ":", ",", False, False, True
)
_PY_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _plain_json(value: Any) -> str:
    """Compact JSON text of a plain value (``_plain``), as json.dumps(separators=(",", ":")) writes it."""
    if _C_ENCODER:
        return "".join(_C_ENCODER(value, 0))
    return _PY_ENCODER.encode(value)

#: The text the plain path wrote last. Such text is JSON that jsonb takes by construction (no NUL, no
#: lone surrogate, finite numbers, shallow), so a caller handed this very object may skip re-parsing
#: it (``producers._fast_records``); another thread's call only replaces it, which costs a re-parse.
LAST_PLAIN: Final[list[str | None]] = [None]


def _plain_text(text: str) -> bool:
    return "\x00" not in text and (text.isascii() or _encodes(text))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether `value` is plain JSON the converter would write as json.dumps does (exact types only).

    str without NUL or lone surrogates, int, finite float, bool, None, and lists, tuples
    and str-keyed dicts of them nested at most _PLAIN_DEPTH deep (so never a cycle).
    """
    kind = type(value)
    if kind is str:
        return _plain_text(value)
    if kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return not value - value  # finite
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not (key.isascii() or _encodes(key)):
                return False
            kind = type(item)
            # Scalars inline (the common flat dict), containers and text by the calls above.
            if kind is int or kind is bool or item is None:
                continue
            if kind is float:
                if item - item:
                    return False
            elif not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def json_text(value: Any, table: str, field: str) -> str:
    """`value` as compact JSON text, or InvalidRecordError naming `field` and the path inside it."""
    if _plain(value):
        # The C encoder writes plain values exactly as the converter below does, much faster.
        try:
            text = LAST_PLAIN[0] = _plain_json(value)
            return text
        except ValueError:  # an int too long for Python's int-to-text limit: the converter says so
            pass
    out: list[str] = []
    try:
        _write(value, out, set())
    except _Unrepresentable as e:
        where = field + "".join(reversed(e.path))
        raise InvalidRecordError(table, field, e.value, f"{e.reason} at {where}") from None
    return "".join(out)


def _write(value: Any, out: list[str], active: set[int]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_string(value))
    elif value is None:
        out.append("null")
    elif kind is bool:
        out.append("true" if value else "false")
    elif kind is int:
        out.append(_int(value))
    elif kind is float:
        out.append(_float(value))
    elif kind is dict or kind is list or kind is tuple:
        _container(value, out, active)
    else:
        _write_other(value, out, active)


def _write_other(value: Any, out: list[str], active: set[int]) -> None:
    if isinstance(value, enum.Enum):
        _write(value.value, out, active)
    elif type(value).__module__ == "numpy":
        _write(_numpy(value), out, active)
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(_int(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, (Mapping, list, tuple)):
        _container(value, out, active)
    elif isinstance(value, (dt.date, dt.time)):  # datetime is a date
        out.append(_string(value.isoformat()))
    elif isinstance(value, uuid.UUID):
        out.append(f'"{value}"')
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise _Unrepresentable(f"Decimal {value} is not valid JSON", value)
        before, after = value.adjusted() + 1, -value.as_tuple().exponent
        if before > NUMERIC_MAX_INTEGER_DIGITS or after > NUMERIC_MAX_FRACTION_DIGITS:
            raise _Unrepresentable(f"Decimal {value:.6e} is out of range for a jsonb number", value)
        out.append(str(value))  # Decimal's text is always a valid JSON number
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _container(value, out, active, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, BaseModel):
        _container(value, out, active, value.model_dump())
    else:
        hint = _HINTS.get(type(value))
        raise _Unrepresentable(hint or f"{type(value).__name__} is not JSON-representable", value)


def _container(value: Any, out: list[str], active: set[int], items: Mapping[Any, Any] | None = None) -> None:
    """A dict or list; `items` are the fields of a dataclass or model `value`."""
    ident = id(value)
    if ident in active:
        raise _Unrepresentable("a cycle (a container inside itself) is not valid JSON", value)
    if len(active) >= MAX_DEPTH:
        raise _Unrepresentable(f"nesting deeper than {MAX_DEPTH} levels is not accepted", type(value).__name__)
    active.add(ident)
    if items is None and not isinstance(value, Mapping):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write_at(i, item, out, active)
        out.append("]")
    else:
        out.append("{")
        mapping = value if items is None else items
        converted: set[str] | None = None  # str keys and converted keys, once a key was converted
        for i, (key, item) in enumerate(mapping.items()):
            if type(key) is str:
                text = key
            else:
                text = _key(key)
                if converted is None:
                    converted = {k for k in mapping if type(k) is str}
                if text in converted:
                    raise _Unrepresentable(f"two keys become {text!r} in JSON", key)
                converted.add(text)
            if i:
                out.append(",")
            out.append(_string(text))
            out.append(":")
            _write_at(text, item, out, active)
        out.append("}")
    active.discard(ident)


def _write_at(where: int | str, item: Any, out: list[str], active: set[int]) -> None:
    """Write the item at index or key `where` of a container, adding that step to an error's path."""
    try:
        _write(item, out, active)
    except _Unrepresentable as e:
        e.path.append(f"[{where}]" if type(where) is int else f"[{encode_basestring_ascii(where)}]")
        raise


def _key(key: Any) -> str:
    """A non-str dict key as text, the way json.dumps writes it."""
    if isinstance(key, enum.Enum):
        key = key.value
    elif type(key).__module__ == "numpy":
        key = _numpy(key)
    if isinstance(key, str):
        return str.__str__(key)
    if key is True or key is False:
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return _float(key)
    raise _Unrepresentable(f"a {type(key).__name__} dict key is not valid JSON (keys are text)", key)


def _string(text: str) -> str:
    # Lone surrogates are not UTF-8 and NUL cannot be stored in jsonb: both would fail later, nameless.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Unrepresentable("a lone surrogate is not valid UTF-8", text) from None
    if "\x00" in text:
        raise _Unrepresentable("a NUL character cannot be stored in jsonb", text)
    return encode_basestring_ascii(text)


def _float(number: float) -> str:
    if math.isfinite(number):
        return float.__repr__(number)
    raise _Unrepresentable(f"{'NaN' if number != number else repr(number)} is not valid JSON", number)


def _numpy(value: Any) -> Any:
    """numpy scalars to Python numbers, arrays to lists; numpy datetimes are refused (ns would become ints)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or getattr(value, "ndim", None) is None:
        raise _Unrepresentable(f"numpy {type(value).__name__} is not JSON-representable", value)
    if dtype.kind in "mM":
        raise _Unrepresentable(f"numpy {dtype} is not converted: pass a datetime or a number", value)
    return value.item() if value.ndim == 0 else value.tolist()
