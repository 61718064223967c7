"""The Avro single-object codec: round trips, old writer versions, fingerprints, bad bytes.

Records are generated valid for each table's pydantic model, normalized by
``validate_record`` (as the producer does), encoded and decoded. Avro ``float``
is 32-bit, so expected floats are rounded through ``struct.pack('<f', x)``.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers import tables
from producers.codec import HEADER_SIZE, MAGIC, AvroCodec, schema_fingerprint
from producers.errors import CodecError, MalformedRecordError, UnknownSchemaError
from producers.columns import COLUMNS, ColumnDef
from producers.models import INT4_MAX, MODELS, REAL_MAX, validate_record

CODEC = AvroCodec()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_VERSIONS = [(v.table, v.version) for vs in CODEC.versions.values() for v in vs]
ALL_FINGERPRINTS = [v.fingerprint for vs in CODEC.versions.values() for v in vs]

# --- strategies -----------------------------------------------------------------------------

_chars = st.characters(codec="utf-8", exclude_characters="\x00")  # no NUL, no lone surrogates


def _text(max_size: int = 30, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(_chars, min_size=min_size, max_size=max_size)


def _varchar(n: int) -> st.SearchStrategy[str]:
    return st.one_of(_text(20), _text(min_size=n, max_size=n))  # short, or exactly at the limit


def _opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


# Valid REAL values: float32-exact values (incl. subnormals), any double that
# fits float4 (rounded on the wire), ints, and the extremes.
_real = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-REAL_MAX, max_value=REAL_MAX, allow_nan=False),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([REAL_MAX, -REAL_MAX, 1.401298464324817e-45, 1e-50, -0.0, 0.1]),
)
_importance = st.one_of(st.floats(min_value=0, max_value=1), st.sampled_from([0, 1, 1e-45, 0.9999999999]))
_zones = st.sampled_from(
    [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=14))]
)
# Kept a day inside year 1..9999 so every offset stays representable in UTC.
_time = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_zones)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text(10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text(8), inner, max_size=3),
    max_leaves=8,
)
_json_text = _json_values.map(lambda v: json.dumps(v, ensure_ascii=False))

def _strategy(c: ColumnDef) -> st.SearchStrategy[Any]:
    """Valid values of a column, edges included, from its definition (producers.columns)."""
    if c.avro == "uuid":
        return st.uuids()
    if c.avro == "timestamp-micros":
        return _time
    if c.avro == "array<string>":
        return st.lists(_varchar(c.max_length) if c.max_length else _text(20), max_size=5)
    if c.avro == "string":
        return _json_text if c.sql == "jsonb" else _varchar(c.max_length) if c.max_length else _text(60)
    if c.avro == "int":
        low = -(2**31) if c.minimum is None else int(c.minimum)
        return st.one_of(st.integers(min_value=low, max_value=INT4_MAX), st.sampled_from([low, INT4_MAX]))
    if (c.minimum, c.maximum) == (0, 1):
        return _importance
    return _real


# (required fields, optional fields) per table, derived from the columns.
FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    t: ({c.name: _strategy(c) for c in cols if not c.nullable}, {c.name: _strategy(c) for c in cols if c.nullable})
    for t, cols in COLUMNS.items()
}


def records(table: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid, normalized records of `table`; optionals absent, None, or set."""
    required, optional = FIELDS[table]
    raw = st.fixed_dictionaries(required, optional={k: _opt(v) for k, v in optional.items()})
    return raw.map(lambda data: validate_record(table, data))


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def on_the_wire(table: str, record: dict[str, Any]) -> dict[str, Any]:
    """What a decoded record must equal: floats rounded to float32."""
    floats = {
        f["name"]
        for f in CODEC.current[table].raw["fields"]
        if f["type"] == "float" or (isinstance(f["type"], list) and "float" in f["type"])
    }
    return {k: (_f32(v) if k in floats and v is not None else v) for k, v in record.items()}


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("table", tables.TABLES)
def test_strategies_cover_every_model_field(table: str) -> None:
    required, optional = FIELDS[table]
    model = MODELS[table].model_fields
    assert set(required) | set(optional) == set(model)
    assert set(required) == {n for n, f in model.items() if f.is_required()}


@pytest.mark.parametrize("table", tables.TABLES)
@SETTINGS
@given(data=st.data())
def test_valid_records_round_trip(table: str, data: st.DataObject) -> None:
    record = data.draw(records(table), label="record")
    encoded = CODEC.encode(table, record)
    assert encoded[:2] == MAGIC
    assert encoded[2:HEADER_SIZE] == CODEC.current[table].fingerprint
    decoded = CODEC.decode(encoded)
    assert decoded.table == table
    assert decoded.version == CODEC.current[table].version
    assert decoded.record == on_the_wire(table, record)
    for name, value in decoded.record.items():
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0), name


@pytest.mark.parametrize("table", tables.TABLES)
@SETTINGS
@given(data=st.data())
def test_specialized_codec_agrees_with_fastavro(table: str, data: st.DataObject) -> None:
    # The hot path uses producers._fast_avro; fastavro is the reference implementation.
    record = data.draw(records(table), label="record")
    schema = CODEC.current[table]
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, schema.parsed, record)
    ours = CODEC.encode(table, record)
    assert ours[HEADER_SIZE:] == reference.getvalue()
    by_fastavro = fastavro.schemaless_reader(io.BytesIO(ours[HEADER_SIZE:]), schema.parsed, None)
    assert CODEC.decode(ours).record == by_fastavro


def test_every_current_schema_gets_a_specialized_codec() -> None:
    # A schema shape the specialized codecs cannot handle silently falls back to fastavro (slow).
    assert set(CODEC._fast) == set(tables.TABLES)


def _varint(zigzagged: int) -> bytes:
    out = bytearray()
    while zigzagged > 0x7F:
        out.append((zigzagged & 0x7F) | 0x80)
        zigzagged >>= 7
    out.append(zigzagged)
    return bytes(out)


@pytest.mark.parametrize("step", [2**64 + 7, 2**70, 2**63 + 5])
def test_a_varint_longer_than_64_bits_is_malformed(step: int) -> None:
    # fastavro would read these modulo 2**64 (2**64 + 7 as 7): the record must not decode at all.
    good = _sample(tables.AGENT_MEMORIES)
    at = HEADER_SIZE + 37 + 8 + 37  # after memory_id, "agent_1" and the run id: step 5, one byte
    assert good[at] == 10  # zigzag(5)
    forged = good[:at] + _varint(2 * step) + good[at + 1:]
    with pytest.raises(MalformedRecordError, match="longer than 64 bits"):
        CODEC.decode(forged)


def test_float32_rounding_is_what_the_wire_carries() -> None:
    # Guards the expectation helper itself: 0.1 is not a float32 value.
    record = validate_record(
        tables.AGENT_MEMORIES,
        {"memory_id": uuid.uuid4(), "agent_id_str": "a", "simulation_run_id": uuid.uuid4(), "step_timestamp": 0,
         "content": "c", "importance": 0.1},
    )
    decoded = CODEC.decode(CODEC.encode(tables.AGENT_MEMORIES, record)).record
    assert decoded["importance"] != 0.1
    assert decoded["importance"] == _f32(0.1)


# --- older writer versions ------------------------------------------------------------------


def test_memory_written_with_v1_decodes_to_current_shape() -> None:
    assert CODEC.current[tables.AGENT_MEMORIES].version == 2
    record = {
        "memory_id": uuid.uuid4(),
        "agent_id_str": "agent_7",
        "simulation_run_id": uuid.uuid4(),
        "step_timestamp": 12,
        "real_timestamp": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
        "content": "met agent_8 at the market",
        "importance": 0.5,
        "tags": ["market", "social"],
    }
    encoded = CODEC.encode(tables.AGENT_MEMORIES, record, version=1)
    assert encoded[2:HEADER_SIZE] == CODEC.versions[tables.AGENT_MEMORIES][0].fingerprint
    decoded = CODEC.decode(encoded)
    assert decoded.table == tables.AGENT_MEMORIES
    assert decoded.version == 1  # the writer's version
    assert decoded.record == {**record, "related_agent_id": None}
    assert list(decoded.record) == [f["name"] for f in CODEC.current[tables.AGENT_MEMORIES].raw["fields"]]


OLD_VERSIONS = [(t, v) for t, v in ALL_VERSIONS if v != CODEC.current[t].version]


def test_there_is_an_old_version_to_test() -> None:
    assert OLD_VERSIONS


@pytest.mark.parametrize(("table", "version"), OLD_VERSIONS)
@SETTINGS
@given(data=st.data())
def test_records_of_every_old_version_decode_to_the_current_shape(table: str, version: int, data: st.DataObject) -> None:
    record = data.draw(records(table), label="record")
    old_fields = {f["name"] for f in CODEC._version(table, version).raw["fields"]}
    written = {k: v for k, v in record.items() if k in old_fields}
    decoded = CODEC.decode(CODEC.encode(table, written, version=version))
    assert decoded.version == version
    current_fields = [f["name"] for f in CODEC.current[table].raw["fields"]]
    assert list(decoded.record) == current_fields
    expected = on_the_wire(table, {name: written.get(name) for name in current_fields})
    assert decoded.record == expected


def test_unknown_version_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        CODEC.encode(tables.AGENTS, {}, version=99)


# --- fingerprints ---------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "version"), ALL_VERSIONS)
def test_fingerprint_matches_fastavro(table: str, version: int) -> None:
    raw = CODEC._version(table, version).raw
    ours = schema_fingerprint(raw).hex()
    assert ours == fastavro.schema.fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
    assert CODEC._version(table, version).fingerprint.hex() == ours


def test_fingerprints_are_unique() -> None:
    assert len(set(ALL_FINGERPRINTS)) == len(ALL_FINGERPRINTS)


# From the Avro specification's test data (share/test/data/schema-tests.txt),
# as signed 64-bit integers over the parsing canonical form.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"float"', 5583340709985441680),
    ('"double"', -8181574048448539266),
    ('"bytes"', 5746618253357095269),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
]


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS)
def test_fingerprints_match_the_specification_vectors(canonical: str, expected: int) -> None:
    # schema_fingerprint takes a schema; the vectors are canonical forms of these schemas.
    schema = json.loads(canonical)
    assert schema_fingerprint(schema) == (expected & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")


# --- bad bytes ------------------------------------------------------------------------------


def _sample(table: str) -> bytes:
    record = {
        tables.SIMULATION_RUNS: {"run_id": uuid.uuid4(), "config_snapshot": '{"a":1}', "start_time": datetime(2024, 1, 1, tzinfo=timezone.utc),
                                 "status": "running", "updated_at": datetime(2024, 1, 1, tzinfo=timezone.utc)},
        tables.AGENTS: {"creation_run_id": uuid.uuid4(), "agent_id_str": "agent_1", "persona": "baker",
                        "updated_at": datetime(2024, 1, 1, tzinfo=timezone.utc)},
        tables.AGENT_MEMORIES: {"memory_id": uuid.uuid4(), "agent_id_str": "agent_1", "simulation_run_id": uuid.uuid4(),
                                "step_timestamp": 5, "content": "bought bread", "importance": 0.5, "tags": ["food"],
                                "related_agent_id": "agent_2"},
        tables.MARKET_TRANSACTIONS: {"transaction_sim_id": "tx", "simulation_run_id": uuid.uuid4(), "step_timestamp": 5,
                                     "market_id": "m", "resource_type": "bread", "buyer_agent_id": "a1",
                                     "seller_agent_id": "a2", "quantity": 1.0, "price_per_unit": 2.0, "total_cost": 2.0,
                                     "sell_order_id": "so-1"},
        tables.BANKING_TRANSACTIONS: {"transaction_sim_id": "bt", "simulation_run_id": uuid.uuid4(), "step_timestamp": 5,
                                      "account_id": "acc", "agent_id_str": "a1", "transaction_type": "deposit",
                                      "amount": 1.0, "balance_after": 2.0, "reference_id": "ref-9"},
        tables.SIMULATION_EVENTS: {"event_uid": uuid.uuid4(), "simulation_run_id": uuid.uuid4(), "step_timestamp": 5,
                                   "event_type": "birth", "details": '{"child":"a3"}', "description": "a3 was born"},
    }[table]
    return CODEC.encode(table, validate_record(table, record))


def test_error_hierarchy() -> None:
    assert issubclass(MalformedRecordError, CodecError)
    assert issubclass(UnknownSchemaError, CodecError)
    assert not issubclass(UnknownSchemaError, MalformedRecordError)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", MAGIC, MAGIC + b"\x00" * 7, b"\x00" * 20, b"\x00\x00\x00\x00\x01" + b"\x02" * 10,
     b"\xc3\x02" + b"\x00" * 20, b"\xc2\x01" + b"\x00" * 20, b"\x01\xc3" + b"\x00" * 20, b'{"run_id": "x"}'],
    ids=["empty", "one-byte", "marker-only", "short-fingerprint", "zeros", "confluent-framing",
         "bad-marker-2nd", "bad-marker-1st", "swapped-marker", "json"],
)
def test_not_single_object_encoding_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedRecordError):
        CODEC.decode(data)


@pytest.mark.parametrize("table", tables.TABLES)
def test_valid_sample_decodes(table: str) -> None:
    assert CODEC.decode(_sample(table)).table == table


@pytest.mark.parametrize("table", tables.TABLES)
def test_every_truncation_is_malformed(table: str) -> None:
    data = _sample(table)
    for end in range(HEADER_SIZE, len(data)):
        with pytest.raises(MalformedRecordError):
            CODEC.decode(data[:end])


@pytest.mark.parametrize("table", tables.TABLES)
@pytest.mark.parametrize("extra", [b"\x00", b"\x02abc", b"\xff" * 16])
def test_trailing_bytes_are_malformed(table: str, extra: bytes) -> None:
    with pytest.raises(MalformedRecordError, match="trailing"):
        CODEC.decode(_sample(table) + extra)


@pytest.mark.parametrize("table", tables.TABLES)
def test_unknown_fingerprint_is_unknown_schema(table: str) -> None:
    data = _sample(table)
    unknown = bytes(b ^ 0x5A for b in data[2:HEADER_SIZE])
    assert unknown not in ALL_FINGERPRINTS
    with pytest.raises(UnknownSchemaError, match=unknown.hex()):
        CODEC.decode(MAGIC + unknown + data[HEADER_SIZE:])


def test_fingerprint_of_an_unregistered_schema_is_unknown() -> None:
    raw = json.loads(json.dumps(CODEC.current[tables.AGENTS].raw))
    raw["fields"].append({"name": "mood", "type": ["null", "string"], "default": None})
    parsed = fastavro.parse_schema(raw)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, {"creation_run_id": uuid.uuid4(), "agent_id_str": "a",
                                             "updated_at": datetime(2024, 1, 1, tzinfo=timezone.utc)})
    with pytest.raises(UnknownSchemaError):
        CODEC.decode(MAGIC + schema_fingerprint(raw) + buf.getvalue())


def test_invalid_utf8_in_a_string_is_malformed() -> None:
    data = _sample(tables.AGENT_MEMORIES)
    assert data.count(b"bought bread") == 1
    with pytest.raises(MalformedRecordError):
        CODEC.decode(data.replace(b"bought bread", b"\xff" * len(b"bought bread")))


def test_invalid_uuid_text_is_malformed() -> None:
    data = _sample(tables.AGENTS)
    text = str(CODEC.decode(data).record["creation_run_id"]).encode()
    with pytest.raises(MalformedRecordError):
        CODEC.decode(data.replace(text, b"z" * len(text)))


def test_payload_of_another_version_is_malformed_not_silently_misread() -> None:
    # A v2 memory payload labelled as v1: the extra related_agent_id bytes are left over.
    data = _sample(tables.AGENT_MEMORIES)
    v1 = CODEC.versions[tables.AGENT_MEMORIES][0].fingerprint
    with pytest.raises(MalformedRecordError):
        CODEC.decode(MAGIC + v1 + data[HEADER_SIZE:])


def _decode_or_codec_error(data: bytes) -> None:
    try:
        decoded = CODEC.decode(data)
    except CodecError:
        return
    assert decoded.table in tables.TABLES
    assert [f["name"] for f in CODEC.current[decoded.table].raw["fields"]] == list(decoded.record)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    _decode_or_codec_error(data)


@SETTINGS
@given(st.sampled_from(ALL_FINGERPRINTS), st.binary(max_size=300))
def test_arbitrary_payloads_under_known_fingerprints_raise_only_codec_errors(fp: bytes, payload: bytes) -> None:
    _decode_or_codec_error(MAGIC + fp + payload)


@SETTINGS
@given(
    st.sampled_from(tables.TABLES),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4),
)
def test_corrupted_valid_messages_raise_only_codec_errors(table: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_sample(table))
    for position, byte in flips:
        data[HEADER_SIZE + position % (len(data) - HEADER_SIZE)] = byte
    _decode_or_codec_error(bytes(data))
