"""The transcoders against the general path, on random valid, invalid and corrupt records.

The general path is what the worker did for every record before: ``AvroCodec.decode``,
``validate_record``, the Kafka timestamp for a missing ``real_timestamp``, the row tuple,
and psycopg's binary dumpers as the sink configures them. The transcoder must accept and
reject the same records (same error class, the same field named), and an accepted
record must give the bytes psycopg would have sent for each column.
"""

from __future__ import annotations

import json
import struct
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import adapters as psycopg_adapters
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq import Format

from consumers import copy_rows
from consumers.sink import configure_adapters
from consumers.table_specs import SPECS
from consumers.transcode import Transcoders
from producers._fast_avro import _write_long
from producers.codec import MAGIC, AvroCodec
from producers.columns import COLUMNS, ColumnDef
from producers.errors import CodecError, InvalidRecordError, MalformedRecordError
from producers.models import validate_record

CODEC = AvroCodec()
TRANSCODERS = Transcoders(CODEC)
FACT_TABLES = copy_rows.FACT_TABLES

_ADAPTERS = AdaptersMap(psycopg_adapters)
configure_adapters(_ADAPTERS)


def _oid(type_name: str) -> int:
    if type_name.endswith("[]"):
        return _ADAPTERS.types[type_name[:-2]].array_oid
    return _ADAPTERS.types[type_name].oid


def psycopg_tuple(table: str, row: tuple[Any, ...]) -> bytes:
    """The COPY tuple psycopg's dumpers make of `row` (what ``Copy.write_row`` sent before)."""
    spec = SPECS[table]
    tx = Transformer(_ADAPTERS)
    tx.set_dumper_types([_oid(c.table_type) for c in spec.columns], Format.BINARY)
    dumped = tx.dump_sequence(row, [Format.BINARY] * len(row))
    parts = [struct.pack("!h", len(row))]
    for d in dumped:
        parts.append(copy_rows.NULL if d is None else struct.pack("!i", len(d)) + bytes(d))
    return b"".join(parts)


def general_path(table: str, value: bytes, ts_ms: int | None) -> tuple[bytes, bytes] | Exception:
    """What the worker's general path makes of a message: (COPY tuple, parent key) or the error."""
    try:
        decoded = CODEC.decode(value)
        fields = validate_record(table, decoded.record)
    except (CodecError, InvalidRecordError) as e:
        return e
    if fields.get("real_timestamp", "absent") is None and ts_ms is not None:
        fields["real_timestamp"] = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    row = tuple(fields[c] for c in SPECS[table].column_names)
    expected = psycopg_tuple(table, row)
    # The sink's own encoder of row tuples (older versions, replays) must agree with psycopg too.
    assert copy_rows.ENCODE_ROW[table](row) == expected
    return expected, copy_rows.PARENT_KEY[table](row)


def transcoded(table: str, value: bytes, ts_ms: int | None) -> tuple[bytes, bytes] | Exception:
    transcode = TRANSCODERS.for_table(table)
    assert transcode is not None
    try:
        out = transcode(value, ts_ms)
    except (CodecError, InvalidRecordError) as e:
        return e
    assert out is not None, "a current-version message must be transcoded"
    return out


def assert_same(table: str, value: bytes, ts_ms: int | None) -> str:
    """Assert both paths agree; return what they did: accepted, or the error class."""
    expected = general_path(table, value, ts_ms)
    got = transcoded(table, value, ts_ms)
    if isinstance(expected, Exception) or isinstance(got, Exception):
        assert type(got) is type(expected), (expected, got)
        if isinstance(expected, InvalidRecordError):
            assert isinstance(got, InvalidRecordError)
            assert got.field == expected.field, (expected, got)
            assert str(got).startswith(f"{table}.{got.field}: ")
        return type(expected).__name__
    assert got == expected
    return "accepted"


# -- raw Avro values: written byte by byte, so invalid ones can be written too ------------------

def _string(out: bytearray, data: bytes) -> None:
    _write_long(out, len(data))
    out += data


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.text(
    st.sampled_from("ab\x00é€𝄞 \n"), min_size=0, max_size=300)


def _text_value(c: ColumnDef) -> st.SearchStrategy[bytes]:
    encoded = _TEXT.map(lambda s: s.encode("utf-8"))
    odd = [st.just(b"\xff\xfe"), st.just(b"\xed\xa0\x80")]  # bad UTF-8, an encoded surrogate
    if c.max_length is not None:
        for n in (c.max_length, c.max_length + 1):
            odd.append(st.just(("x" * n).encode()))
            odd.append(st.just(("é" * n).encode()))
    choices = [encoded] * 12 + odd
    if c.sql == "jsonb":
        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8)
        choices += [json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
                    st.sampled_from([b"NaN", b"[1,", b'"\\u0000"', b'"\\\\u0000"', b'"\\ud800"', b"1e999",
                                     b" {} ", b"[" * 2000 + b"]" * 2000, b'{"a":Infinity}'])]
    return st.one_of(choices)


def _uuid_value() -> st.SearchStrategy[bytes]:
    good = st.uuids().map(lambda u: str(u).encode())
    odd = st.uuids().map(lambda u: u.hex.encode()) | st.uuids().map(lambda u: str(u).upper().encode()) | \
        st.uuids().map(lambda u: f"{{{u}}}".encode())
    bad = st.sampled_from([b"", b"not-a-uuid", b"12345678-1234-1234-1234-12345678901g",
                           b"12345678-1234-1234-1234-1234567890-1", b"\xff" * 36])
    # Text uuid.UUID alone would read as some other UUID: never accepted.
    garbled = st.uuids().flatmap(lambda u: st.sampled_from([t.encode() for t in _garbled(u)]))
    return st.one_of([good] * 12 + [odd, bad, garbled])


def _garbled(u: uuid.UUID) -> list[str]:
    h, t = u.hex, str(u)
    return [" " + h[1:], "+" + h[1:], h[:4] + "_" + h[5:], h[:12] + "-" + h[12:], t + "-", "{{" + t + "}}",
            "uuid:" + t, "urn:uuid:" + h, "{" + h + "}", t[:-1] + "\u0661", "-" + h, t + "\n", "{" + t,
            "URN:UUID:" + t]


def _number(c: ColumnDef) -> st.SearchStrategy[bytes]:
    if c.avro == "int":
        out = st.one_of([st.integers(0, 1000)] * 8 + [st.integers(-(2**40), 2**40), st.sampled_from(
            [-(2**31), -(2**31) - 1, 2**31 - 1, 2**31, -1, 2**63 - 1, -(2**63)])])

        def varint(n: int) -> bytes:
            b = bytearray()
            _write_long(b, n)
            return bytes(b)

        return out.map(varint)
    if c.avro == "float":
        finite = st.floats(0, 1, width=32) | st.floats(width=32, allow_nan=False, allow_infinity=False)
        return st.one_of([finite.map(lambda f: struct.pack("<f", f))] * 6 + [st.sampled_from(
            [struct.pack("<f", f) for f in (0.0, -0.0, 1.0, 1.0000001, -1e-45, float("nan"), float("inf"))])])
    return st.floats().map(lambda f: struct.pack("<d", f))


def _timestamp() -> st.SearchStrategy[bytes]:
    def varint(n: int) -> bytes:
        b = bytearray()
        _write_long(b, n)
        return bytes(b)

    return st.one_of([st.integers(0, 2**52)] * 8 + [st.integers(-(2**63), 2**63 - 1), st.sampled_from(
        [-62135596800_000_000, -62135596800_000_001, 253402300799_999_999, 253402300800_000_000])]).map(varint)


def _array(c: ColumnDef) -> st.SearchStrategy[bytes]:
    def encode(items: list[bytes], blocked: bool) -> bytes:
        out = bytearray()
        if items:
            if blocked:  # a negative count, then the block's size in bytes
                body = bytearray()
                for item in items:
                    _string(body, item)
                _write_long(out, -len(items))
                _write_long(out, len(body))
                out += body
            else:
                _write_long(out, len(items))
                for item in items:
                    _string(out, item)
        out.append(0)
        return bytes(out)

    return st.builds(encode, st.lists(_text_value(c), max_size=4), st.booleans())


def _value(c: ColumnDef) -> st.SearchStrategy[bytes]:
    if c.avro == "uuid":
        inner = _uuid_value().map(lambda s: _prefixed(s))
    elif c.avro == "string":
        inner = _text_value(c).map(_prefixed)
    elif c.avro in ("int", "float", "double"):
        inner = _number(c)
    elif c.avro == "timestamp-micros":
        inner = _timestamp()
    else:
        inner = _array(c)
    if not c.nullable:
        return inner
    return st.one_of(st.just(b"\x00"), inner.map(lambda v: b"\x02" + v))


def _prefixed(data: bytes) -> bytes:
    out = bytearray()
    _string(out, data)
    return bytes(out)


@st.composite
def messages(draw: Any, table: str) -> bytes:
    payload = b"".join(draw(_value(c)) for c in COLUMNS[table])
    value = MAGIC + CODEC.current[table].fingerprint + payload
    damage = draw(st.sampled_from(["none"] * 20 + ["truncate", "flip", "append"]))
    if damage == "truncate":
        value = value[:draw(st.integers(10, len(value)))]
    elif damage == "flip":
        i = draw(st.integers(10, len(value) - 1))
        value = value[:i] + bytes([draw(st.integers(0, 255))]) + value[i + 1:]
    elif damage == "append":
        value += draw(st.binary(min_size=1, max_size=3))
    return value


_TS = st.none() | st.integers(0, 2**42) | st.just(0)


@pytest.mark.parametrize("table", FACT_TABLES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ts_ms=_TS)
def test_random_records_are_accepted_and_loaded_as_before(table: str, data: Any, ts_ms: int | None) -> None:
    event(assert_same(table, data.draw(messages(table)), ts_ms))


@pytest.mark.parametrize("table", FACT_TABLES)
def test_valid_records_from_the_producer_codec_load_as_before(table: str) -> None:
    """Records encoded the producer's way, with every nullable field set and unset."""
    run = uuid.uuid4()
    base = {
        "agent_memories": {"memory_id": uuid.uuid4(), "agent_id_str": "agent_7", "simulation_run_id": run,
                           "step_timestamp": 12, "content": "Sold bread — for 3 €", "importance": 0.25,
                           "tags": ["trade", "bread"], "related_agent_id": "agent_8"},
        "simulation_events": {"event_uid": uuid.uuid4(), "simulation_run_id": run, "step_timestamp": 0,
                              "event_type": "trade", "agent_id_primary": "agent_1", "agent_id_secondary": None,
                              "details": '{"price": 2.5, "items": ["a", "b"]}', "description": "x"},
        "market_transactions": {"transaction_sim_id": "mt_1", "simulation_run_id": run, "step_timestamp": 3,
                                "market_id": "food", "resource_type": "food", "buyer_agent_id": "a1",
                                "seller_agent_id": "a0", "quantity": 4.0, "price_per_unit": 2.5,
                                "total_cost": 10.0, "buy_order_id": None, "sell_order_id": "s1"},
        "banking_transactions": {"transaction_sim_id": "bt_1", "simulation_run_id": run, "step_timestamp": 3,
                                 "account_id": "acc_1", "agent_id_str": "a1", "transaction_type": "deposit",
                                 "amount": 5.5, "balance_after": 105.5, "description": None,
                                 "counterparty_id": None, "reference_id": "r"},
    }[table]
    for real_timestamp in (None, datetime(2026, 11, 28, 7, 30, 1, 123456, tzinfo=timezone.utc)):
        for ts_ms in (None, 1_764_315_001_234):
            value = CODEC.encode(table, {**base, "real_timestamp": real_timestamp})
            assert_same(table, value, ts_ms)
            assert not isinstance(transcoded(table, value, ts_ms), Exception)


def test_other_schema_versions_are_left_to_the_general_path() -> None:
    old = next(v for v in CODEC.versions["agent_memories"] if v is not CODEC.current["agent_memories"])
    value = MAGIC + old.fingerprint + b"\x00"
    transcode = TRANSCODERS.for_table("agent_memories")
    assert transcode is not None
    assert transcode(value, None) is None
    assert transcode(b"not avro at all", None) is None
    assert TRANSCODERS.for_table("agents") is None


# -- JSON text nesting: an explicit bound, the same on the producer and in the worker ------------

def _event(details: str) -> dict[str, Any]:
    return {"event_uid": uuid.uuid4(), "simulation_run_id": uuid.uuid4(), "step_timestamp": 0,
            "event_type": "trade", "agent_id_primary": "a1", "agent_id_secondary": None,
            "details": details, "description": None, "real_timestamp": None}


@pytest.mark.parametrize("depth", [100, 101, 980, 5000])
@pytest.mark.parametrize("shape", ["[", '{"k":'])
def test_json_text_nesting_is_bounded_by_a_scan_the_same_everywhere(depth: int, shape: str) -> None:
    """Never json's recursion limit (which depends on the call stack): 100 levels, as JSON values."""
    from producers._fast_records import ENCODERS
    from producers.models import JSON_TOO_DEEP, MAX_JSON_DEPTH, _json_text

    if depth > 100:
        with pytest.raises(ValueError, match=f"^{JSON_TOO_DEEP}$"):
            _json_text("[" * depth + "]" * depth)

    assert MAX_JSON_DEPTH == 100
    close = "]" if shape == "[" else "}"
    # Brackets inside strings do not count, at any depth.
    details = shape * depth + '"[[[{{{\\"]]"' + close * depth
    too_deep = depth > MAX_JSON_DEPTH
    record = _event(details)

    # The producer: the model, and the fast encoder (which raises the model's error or defers to it).
    try:
        validate_record("simulation_events", record)
        model_error = None
    except InvalidRecordError as e:
        model_error = e
    # None: the producer takes the model's path, and its error, instead.
    fast_payload = ENCODERS["simulation_events"](b"H" + str(record["simulation_run_id"]).encode(), 0,
                                                 datetime(2026, 1, 1, tzinfo=timezone.utc), "trade", "a1", None,
                                                 details, None)
    # The worker: the general path and the transcoder, on the same payload.
    value = CODEC.encode("simulation_events", {**record, "details": "[]"}).replace(
        b"\x04[]", _avro_string(details.encode()), 1)
    general, fast = general_path("simulation_events", value, None), transcoded("simulation_events", value, None)
    if too_deep:
        assert model_error is not None and model_error.field == "details"
        assert str(model_error).startswith(f"simulation_events.details: Value error, {JSON_TOO_DEEP} (got ")
        assert fast_payload is None
        for got in (general, fast):
            assert isinstance(got, InvalidRecordError) and str(got) == str(model_error)
    else:
        assert model_error is None and fast_payload is not None
        assert not isinstance(general, Exception) and fast == general


def _avro_string(data: bytes) -> bytes:
    out = bytearray()
    _string(out, data)
    return bytes(out)


# -- UUID text: the forms the models accept, nothing uuid.UUID would reinterpret -----------------

@pytest.mark.parametrize("text", _garbled(uuid.UUID("6f1c2a52-3d0b-5b7e-9a43-5d1f0c2b7e11")))
@pytest.mark.parametrize("version", ["current", "older"])
def test_garbled_uuid_text_is_refused_on_every_path(text: str, version: str) -> None:
    from producers._fast_avro import uuid_of_text

    with pytest.raises(ValueError):
        uuid_of_text(text)
    record = {"memory_id": text, "agent_id_str": "a", "simulation_run_id": uuid.uuid4(), "step_timestamp": 1,
              "real_timestamp": None, "content": "c", "importance": 0.5, "tags": None, "related_agent_id": None}
    with pytest.raises(InvalidRecordError, match="memory_id"):
        validate_record("agent_memories", record)  # the producer's models
    if version == "current":
        value = CODEC.encode("agent_memories", {**record, "memory_id": uuid.uuid4()})
        value = value[:10] + _avro_string(text.encode()) + value[10 + 37:]
        assert isinstance(transcoded("agent_memories", value, None), MalformedRecordError)
    else:
        old = CODEC.versions["agent_memories"][0]
        assert old is not CODEC.current["agent_memories"]
        value = CODEC.encode("agent_memories", {k: v for k, v in record.items() if k in
                                                {f["name"] for f in old.raw["fields"]}}, version=old.version)
    with pytest.raises(MalformedRecordError, match="badly formed hexadecimal UUID string"):
        CODEC.decode(value)  # the worker's general path


@pytest.mark.parametrize("form", [str, lambda u: u.hex, lambda u: str(u).upper(), lambda u: f"{{{u}}}",
                                  lambda u: f"urn:uuid:{u}"])
def test_the_uuid_forms_the_models_accept_load_as_the_same_uuid(form: Any) -> None:
    u = uuid.uuid4()
    record = {"memory_id": form(u), "agent_id_str": "a", "simulation_run_id": uuid.uuid4(), "step_timestamp": 1,
              "real_timestamp": None, "content": "c", "importance": 0.5, "tags": None, "related_agent_id": None}
    assert validate_record("agent_memories", record)["memory_id"] == u
    value = CODEC.encode("agent_memories", {**record, "memory_id": uuid.uuid4()})
    value = value[:10] + _avro_string(form(u).encode()) + value[10 + 37:]
    assert CODEC.decode(value).record["memory_id"] == u
    assert assert_same("agent_memories", value, None) == "accepted"


def test_older_versions_refuse_varints_longer_than_64_bits() -> None:
    """fastavro would read 2**64 + 14 as 7 (zigzag): a malformed record, as for the current version."""
    old = CODEC.versions["agent_memories"][0]
    assert old is not CODEC.current["agent_memories"]
    record = {"memory_id": uuid.uuid4(), "agent_id_str": "a", "simulation_run_id": uuid.uuid4(), "step_timestamp": 7,
              "real_timestamp": None, "content": "c", "importance": 0.5, "tags": None, "related_agent_id": None}
    fields = {f["name"] for f in old.raw["fields"]}
    value = CODEC.encode("agent_memories", {k: v for k, v in record.items() if k in fields}, version=old.version)
    assert CODEC.decode(value).record["step_timestamp"] == 7
    seven = bytearray()
    _write_long(seven, 7)
    long_seven = bytearray()
    n = 2**64 + 14  # zigzag 7 plus 2**64: the same low 64 bits
    while n >= 0x80:
        long_seven.append((n & 0x7F) | 0x80)
        n >>= 7
    long_seven.append(n)
    at = 10 + 37 + 2 + 37  # header, memory_id, agent_id_str "a", simulation_run_id
    assert value[at:at + 1] == bytes(seven)
    bad = value[:at] + bytes(long_seven) + value[at + 1:]
    with pytest.raises(MalformedRecordError, match="varint longer than 64 bits"):
        CODEC.decode(bad)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(st.none() | st.integers() | st.text(st.sampled_from('[]{}"\\ab\u00e9'), max_size=8),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(st.sampled_from('[]{}"\\k'), max_size=4), inner, max_size=3),
                          max_leaves=12),
       ascii_only=st.booleans())
def test_the_depth_scan_counts_the_brackets_json_parses(value: Any, ascii_only: bool) -> None:
    from producers.models import MAX_JSON_DEPTH, json_too_deep

    text = json.dumps(value, ensure_ascii=ascii_only)
    room = MAX_JSON_DEPTH - _depth(value)
    assert not json_too_deep("[" * room + text + "]" * room)
    assert json_too_deep("[" * (room + 1) + text + "]" * (room + 1))
