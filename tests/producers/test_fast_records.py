"""The record_* fast path against its reference: the pydantic models, then the codec.

Arguments are generated valid and invalid for every column (wrong types, bool
for int, numpy scalars, NaN and infinities, out-of-range numbers, huge ints,
NUL and lone surrogates, None where required, odd tags, JSON edge cases).
Whatever the fast encoder accepts the model accepts too, and it writes the
same bytes; whatever it passes on, the producer's call then accepts or
rejects exactly as the model does, with the model's error.
"""

from __future__ import annotations

import decimal
import enum
import json
import math
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from producers import InvalidRecordError, ProducerSettings, SocietyProducer, ids, tables
from producers._fast_records import CALLS, ENCODERS, _long, _micros
from producers._json import LAST_PLAIN, _write, json_text
from producers.codec import MAGIC, AvroCodec
from producers.columns import COLUMNS, ColumnDef
from producers.models import INT4_MAX, MAX_TEXT_CHARS, REAL_MAX, _json_text, validate_record

CODEC = AvroCodec()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Values at the 100,000-character text limit make hypothesis warn about their repr: expected here.
LARGE_REPRS = pytest.mark.filterwarnings("ignore:Generating overly large repr")
RUN = uuid.UUID("83e742ae-1f4e-4b55-9a53-0c6f1f5b7e21")
RUN_ENCODED = b"H" + str(RUN).encode()
#: No broker listens here: records stay queued (the producer is aborted after each test).
NOWHERE = "127.0.0.1:9"


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


# --- strategies: valid and invalid values of each column ------------------------------------

_valid_chars = st.characters(codec="utf-8", exclude_characters="\x00")
_any_chars = st.characters(min_codepoint=0, max_codepoint=0x10FFFF)  # NUL and lone surrogates too
_others = st.sampled_from(
    [None, 0, 1.5, True, b"bytes", ["a"], ("a",), {"a"}, Color.RED, Text("sub"), np.str_("np"), uuid.UUID(int=1)]
)
_zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


def _texts(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(_valid_chars, max_size=30),
        st.sampled_from(["x" * limit, "é" * limit, "😀" * limit]),  # at the limit, in characters
        st.sampled_from(["x" * (limit + 1), "é" * (limit + 1)]),  # one past it
        st.text(_any_chars, max_size=10),
        _others,
    )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(_any_chars, max_size=8),
        st.sampled_from([10**4299, -(10**4299), decimal.Decimal("1.5"), decimal.Decimal("1e5000"), Color.RED,
                         Level.HIGH, np.int64(3), np.float32(1.5), b"x", {1, 2}, datetime(2025, 1, 1)]),
    )
    keys = st.one_of(st.text(_any_chars, max_size=6), st.integers(-3, 3), st.booleans(), st.none())
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=3),
        max_leaves=10,
    )


def _json_texts() -> st.SearchStrategy[Any]:
    return st.one_of(
        _json_values().map(lambda v: json.dumps(v, ensure_ascii=False, default=repr)),
        _json_values().map(lambda v: json.dumps(v, default=repr)),
        st.sampled_from(['{"a": NaN}', "[Infinity]", '"\\u0000"', '"\\\\u0000"', '"\\ud800"', "[" * 2000 + "]" * 2000,
                         "{", "", "nul\x00", '{"a":1}', "1e400", "1" * 5000]),
        st.text(_any_chars, max_size=10),
        _others,
    )


def _ints(c: ColumnDef) -> st.SearchStrategy[Any]:
    low = -(2**31) if c.minimum is None else int(c.minimum)
    return st.one_of(
        st.integers(min_value=low, max_value=INT4_MAX),
        st.sampled_from([low, INT4_MAX, low - 1, INT4_MAX + 1, 2**70, -(2**70), 16383, 16384, True, 3.0,
                         np.int64(3), Level.HIGH, "3", None]),
    )


def _reals(c: ColumnDef) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.floats(),
        st.floats(min_value=c.minimum, max_value=c.maximum) if c.minimum is not None else st.floats(width=32),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.sampled_from([REAL_MAX, -REAL_MAX, 3.4028235e38, 3.5e38, 1e-50, -0.0, 1.0, 0, 1, 10**400, True,
                         np.float64(0.5), np.float32(0.5), np.int64(1), "0.5", decimal.Decimal("0.5"), None,
                         math.nan, math.inf, -math.inf, 1.0000001]),
    )


def _times() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_zones),
        st.datetimes(timezones=st.just(timezone.utc)),
        st.datetimes(),  # naive
        st.sampled_from([0, 1.7e9, "2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00", datetime.max.replace(
            tzinfo=timezone(timedelta(hours=-1))), datetime.min.replace(tzinfo=timezone.utc), b"x"]),
    )


def _tag_lists(c: ColumnDef) -> st.SearchStrategy[Any]:
    limit = c.max_length or MAX_TEXT_CHARS
    return st.one_of(
        st.lists(st.text(_valid_chars, max_size=10), max_size=4),
        st.lists(_texts(limit), max_size=3),
        st.sampled_from([("a", "b"), {"a"}, "tag", [None], [1], []]),
    )


def column_values(c: ColumnDef) -> st.SearchStrategy[Any]:
    """Values of column `c`, mostly valid, many invalid."""
    if c.avro == "string":
        if c.sql == "jsonb":
            return _json_texts()
        return _texts(c.max_length or MAX_TEXT_CHARS)
    if c.avro == "int":
        return _ints(c)
    if c.avro in ("float", "double"):
        return _reals(c)
    if c.avro == "timestamp-micros":
        return _times()
    if c.avro == "array<string>":
        return _tag_lists(c)
    if c.avro == "uuid":
        return st.one_of(st.uuids(), st.sampled_from([str(RUN), "not-a-uuid", None, 5]))
    raise AssertionError(c)


def _arguments(table: str) -> st.SearchStrategy[dict[str, Any]]:
    """The columns a record_* call takes from its caller (not the run, not a derived id)."""
    derived, _ = CALLS[table]
    run = tables.DECLARATIONS[table].run_column
    return st.fixed_dictionaries({c.name: column_values(c) for c in COLUMNS[table] if c.name not in (derived, run)})


def _reference(table: str, args: dict[str, Any], uid: uuid.UUID | None) -> bytes | InvalidRecordError:
    """The reference path: the model, then the codec; or the model's error."""
    derived, _ = CALLS[table]
    record = {**args, tables.DECLARATIONS[table].run_column: RUN}
    if derived is not None:
        record[derived] = uid
    try:
        return CODEC.encode(table, validate_record(table, record))
    except InvalidRecordError as e:
        return e


def _fast(table: str, args: dict[str, Any], uid: uuid.UUID | None) -> bytes | None:
    derived, _ = CALLS[table]
    run = tables.DECLARATIONS[table].run_column
    names = [c.name for c in COLUMNS[table] if c.name != derived]
    payload = ENCODERS[table](*(RUN_ENCODED if n == run else args[n] for n in names))
    if payload is None:
        return None
    header = MAGIC + CODEC.current[table].fingerprint
    return header + (b"H" + str(uid).encode() if derived is not None else b"") + payload


# --- the encoders ---------------------------------------------------------------------------


@LARGE_REPRS
@pytest.mark.parametrize("table", list(CALLS))
@SETTINGS
@given(data=st.data())
def test_what_the_fast_encoder_accepts_the_model_accepts_with_the_same_bytes(table: str, data: st.DataObject) -> None:
    args = data.draw(_arguments(table), label="args")
    _, now = CALLS[table]
    assume(args[now] is not None)  # None is "now": compared in its own test
    uid = uuid.uuid5(RUN, "x")
    fast = _fast(table, args, uid)
    reference = _reference(table, args, uid)
    if fast is not None:
        assert not isinstance(reference, InvalidRecordError), reference
        assert fast == reference


def _plain_arguments(table: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid arguments of the usual types: exact str, int, float, list of str, UTC datetime, JSON text."""
    derived, now = CALLS[table]
    run = tables.DECLARATIONS[table].run_column
    fields = {}
    for c in COLUMNS[table]:
        if c.name in (derived, run):
            continue
        if c.avro == "string":
            s = (st.dictionaries(st.text(_valid_chars, max_size=5), st.integers() | st.text(_valid_chars, max_size=5))
                 .map(json.dumps) if c.sql == "jsonb" else st.text(_valid_chars, max_size=c.max_length or 200))
        elif c.avro == "int":
            s = st.integers(min_value=int(c.minimum or 0), max_value=INT4_MAX)
        elif c.avro in ("float", "double"):
            s = (st.floats(min_value=c.minimum, max_value=c.maximum) if c.minimum is not None
                 else st.floats(width=32, allow_nan=False, allow_infinity=False))
        elif c.avro == "timestamp-micros":
            s = st.datetimes(timezones=st.just(timezone.utc))
        else:
            s = st.lists(st.text(_valid_chars, max_size=c.max_length or 200), max_size=4)
        fields[c.name] = st.one_of(st.none(), s) if c.nullable and c.name != now else s
    return st.fixed_dictionaries(fields)


@pytest.mark.parametrize("table", list(CALLS))
@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_the_fast_encoder_takes_the_usual_valid_arguments(table: str, data: st.DataObject) -> None:
    # Not vacuous: the shapes the simulation passes never fall back to the (slow) reference path.
    args = data.draw(_plain_arguments(table), label="args")
    uid = uuid.uuid4()
    fast = _fast(table, args, uid)
    assert fast is not None
    assert fast == _reference(table, args, uid)


@pytest.mark.parametrize("table", list(CALLS))
def test_event_time_none_is_now(table: str) -> None:
    args = {c.name: None for c in COLUMNS[table]}
    derived, now = CALLS[table]
    run = tables.DECLARATIONS[table].run_column
    names = [c.name for c in COLUMNS[table] if c.name != derived]
    assert ENCODERS[table](*(RUN_ENCODED if n == run else None for n in names)) is None  # required ones are None
    for c in COLUMNS[table]:  # fill the required ones with valid values
        if not c.nullable and c.name not in (derived, run, now):
            args[c.name] = 1 if c.avro in ("int", "float", "double") else "x"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    payload = ENCODERS[table](*(RUN_ENCODED if n == run else args[n] for n in names))
    after = datetime.now(timezone.utc) + timedelta(microseconds=1)
    uid = uuid.uuid4()
    head = MAGIC + CODEC.current[table].fingerprint + (b"H" + str(uid).encode() if derived else b"")
    recorded = CODEC.decode(head + payload).record[now]
    assert before <= recorded <= after


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
@example(2**48)
@example(2**48 - 1)
@example(2**55)
@example(2**55 - 1)
@example(-1)
def test_timestamp_varints_match_the_general_ones(n: int) -> None:
    assert _micros(n) == _long(n)


# --- ids --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(run=st.uuids(), subject=st.text(_valid_chars, max_size=20), step=st.integers(0, INT4_MAX),
       seq=st.integers(0, 10**6))
def test_run_ids_are_the_uuid5_ids(run: uuid.UUID, subject: str, step: int, seq: int) -> None:
    derive = ids.RunIds(str(run))
    memory, text = derive.memory(subject, step, seq)
    assert memory == ids.memory_id(run, subject, step, seq)
    assert text == str(memory).encode() and memory.version == 5 and memory.bytes == uuid.UUID(str(memory)).bytes
    event, text = derive.event(subject, step, seq)
    assert event == ids.event_uid(run, step, subject, seq) and text == str(event).encode()
    assert hash(event) == hash(uuid.UUID(str(event))) and event.is_safe == uuid.SafeUUID.unknown


# --- JSON -------------------------------------------------------------------------------------


def _converter(value: Any) -> str:
    """The general converter alone (no plain fast path)."""
    out: list[str] = []
    _write(value, out, set())
    return "".join(out)


@settings(max_examples=500, deadline=None)
@given(value=_json_values())
@example({"a": [1, 2.5, None, True, "é😀"], "b": {"c": ""}})
@example([[[[[]]]]])
def test_plain_json_is_written_as_the_converter_writes_it(value: Any) -> None:
    try:
        expected: str | Exception = _converter(value)
    except Exception as e:  # the converter's own error (json_text names the field)
        expected = e
    try:
        got: str | Exception = json_text(value, "simulation_events", "details")
    except InvalidRecordError as e:
        got = e
    if isinstance(expected, str):
        assert got == expected
        if got is LAST_PLAIN[0] and len(got) <= MAX_TEXT_CHARS * 4:
            _json_text(got)  # trusted text is JSON that jsonb takes: this must not raise
    else:
        assert isinstance(got, InvalidRecordError) and str(expected) in str(got)


@pytest.mark.parametrize("digits", [4300, 4301, 5000])
def test_ints_past_the_text_limit_take_the_converter(digits: int) -> None:
    # Not in the generated values: hypothesis cannot print them (repr raises past 4,300 digits).
    value = {"n": [10 ** (digits - 1)]}
    try:
        expected: Any = _converter(value)
    except Exception as e:
        expected = e
    if isinstance(expected, str):
        assert json_text(value, "simulation_events", "details") == expected
    else:
        with pytest.raises(InvalidRecordError, match="too long"):
            json_text(value, "simulation_events", "details")


def test_deep_plain_json_takes_the_converter() -> None:
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    with pytest.raises(InvalidRecordError, match="nesting deeper than 100"):
        json_text(deep, "simulation_events", "details")
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(InvalidRecordError, match="cycle"):
        json_text(cycle, "simulation_events", "details")


# --- the producer's calls ---------------------------------------------------------------------

_CALL = {
    tables.AGENTS: lambda p, a: p.record_agent(
        a["agent_id_str"], persona=a["persona"], agent_type=a["initial_agent_type"], step=a["creation_step"]),
    tables.AGENT_MEMORIES: lambda p, a: p.record_memory(
        a["agent_id_str"], a["content"], a["step_timestamp"], importance=a["importance"], tags=a["tags"],
        related_agent_id=a["related_agent_id"], timestamp=a["real_timestamp"]),
    tables.MARKET_TRANSACTIONS: lambda p, a: p.record_market_transaction(
        a["transaction_sim_id"], a["step_timestamp"], market_id=a["market_id"], resource_type=a["resource_type"],
        buyer_id=a["buyer_agent_id"], seller_id=a["seller_agent_id"], quantity=a["quantity"],
        price_per_unit=a["price_per_unit"], total_cost=a["total_cost"], buy_order_id=a["buy_order_id"],
        sell_order_id=a["sell_order_id"], timestamp=a["real_timestamp"]),
    tables.BANKING_TRANSACTIONS: lambda p, a: p.record_bank_transaction(
        a["transaction_sim_id"], a["step_timestamp"], account_id=a["account_id"], agent_id=a["agent_id_str"],
        transaction_type=a["transaction_type"], amount=a["amount"], balance_after=a["balance_after"],
        description=a["description"], counterparty_id=a["counterparty_id"], reference_id=a["reference_id"],
        timestamp=a["real_timestamp"]),
    tables.SIMULATION_EVENTS: lambda p, a: p.record_event(
        a["event_type"], a["step_timestamp"], agent_id_primary=a["agent_id_primary"],
        agent_id_secondary=a["agent_id_secondary"], details=a["details"], description=a["description"],
        timestamp=a["real_timestamp"]),
}


@pytest.fixture(scope="module")
def queued() -> Any:
    p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, queue_max_messages=100_000))
    p.start_run(run_id=RUN)
    yield p
    p.abort()


def _error(e: InvalidRecordError) -> tuple[str, str, str, str]:
    return e.table, e.field, repr(e.value), e.reason


@LARGE_REPRS
@pytest.mark.parametrize("table", list(CALLS))
@SETTINGS
@given(data=st.data())
def test_record_calls_accept_and_reject_exactly_what_the_model_does(
    queued: SocietyProducer, table: str, data: st.DataObject
) -> None:
    args = data.draw(_arguments(table), label="args")
    if table == tables.SIMULATION_EVENTS and data.draw(st.booleans(), label="details as a value"):
        args["details"] = data.draw(_json_values(), label="details")
    derived, now = CALLS[table]
    if table == tables.AGENTS:
        args[now] = None  # record_agent takes no time: it is always now
    reference_args = dict(args)
    if table == tables.SIMULATION_EVENTS and args["details"] is not None and not isinstance(args["details"], str):
        try:
            reference_args["details"] = json_text(args["details"], table, "details")
        except InvalidRecordError as e:
            reference_args = {"error": e}
    sent = queued.stats().total_sent
    try:
        got: Any = _CALL[table](queued, args)
    except InvalidRecordError as e:
        got = e
    if "error" in reference_args:
        assert isinstance(got, InvalidRecordError) and _error(got) == _error(reference_args["error"])
        return
    if reference_args[now] is None:
        reference_args[now] = datetime.now(timezone.utc)  # validity does not depend on the time
    reference = _reference(table, reference_args, ids.NAMESPACE)  # the id's stand-in until numbered
    if isinstance(reference, InvalidRecordError):
        assert isinstance(got, InvalidRecordError), f"accepted what the model rejects: {reference}"
        assert _error(got) == _error(reference)
        assert queued.stats().total_sent == sent
    else:
        assert not isinstance(got, InvalidRecordError), got
        assert queued.stats().total_sent == sent + 1
        if derived is not None:
            assert isinstance(got, uuid.UUID) and got.version == 5


def test_the_numbering_is_unchanged_by_the_fast_path_and_its_fallbacks(queued: SocietyProducer) -> None:
    # Memories and events numbered per (subject, step), across fast calls, reference-path calls
    # (a numpy step, an ISO timestamp) and refused calls (which take no number).
    step = 424242
    got = [
        queued.record_memory("a", "fast", step),
        queued.record_memory("a", "reference", np.int64(step).item(), timestamp="2025-01-01T00:00:00+00:00"),
    ]
    with pytest.raises(InvalidRecordError):
        queued.record_memory("a", "refused", step, importance=2.0)
    got.append(queued.record_memory("a", "fast again", step, tags=["x"]))
    got.append(queued.record_event("E", step, details={"k": [1, 2]}))
    got.append(queued.record_event("E", step, details=decimal.Decimal("1.5")))  # the converter, then the model
    assert got == [ids.memory_id(RUN, "a", step, n) for n in range(3)] + [ids.event_uid(RUN, step, "", n) for n in range(2)]


def test_a_given_id_is_kept(queued: SocietyProducer) -> None:
    mine = uuid.uuid4()
    assert queued.record_memory("a", "mine", 1, memory_id=mine) is mine
    assert queued.record_event("E", 1, event_uid=mine) is mine
    with pytest.raises(InvalidRecordError, match="memory_id"):
        queued.record_memory("a", "mine", 1, memory_id="not a uuid")


def test_oversize_records_are_refused_by_the_reference_check(queued: SocietyProducer) -> None:
    small = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, max_message_bytes=1000))
    try:
        small.start_run()
        with pytest.raises(InvalidRecordError, match="over the 1,000-byte message limit.*largest field: content"):
            small.record_memory("a", "x" * 1000, 1)
        assert small.record_memory("a", "x" * 100, 1) == ids.memory_id(small.run_id, "a", 1, 0)  # took no number
    finally:
        small.abort()


def test_calls_after_close_or_before_a_run_raise_as_before() -> None:
    p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE))
    try:
        with pytest.raises(Exception, match="no run started"):
            p.record_memory("a", "x", 1)
        p.start_run()
    finally:
        p.abort()
    with pytest.raises(Exception, match="closed"):
        p.record_memory("a", "x", 1)
    t0 = time.monotonic()
    with pytest.raises(Exception, match="closed"):
        p.record_event("E", 1, details={"a": 1})
    assert time.monotonic() - t0 < 1


def test_the_usual_calls_never_reach_the_models(queued: SocietyProducer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference path starts with validate_record: the simulation's usual calls must not get there.
    from producers import producer as module

    def reference_path(table: str, record: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"{table} took the reference path")

    monkeypatch.setattr(module, "validate_record", reference_path)
    at = datetime.now(timezone.utc)
    queued.record_agent("agent_1", persona="baker", agent_type="trader", step=0)
    queued.record_memory("agent_1", "Sold bread", 3, importance=0.5, tags=["trade"], timestamp=at)
    queued.record_memory("agent_1", "Bought flour", 3, importance=1, related_agent_id="agent_2")
    queued.record_event("trade", 3, agent_id_primary="agent_1", details={"price": 2.5, "ok": True, "n": [1]})
    queued.record_event("weather", 3, details='{"rain": true}', description="rain")
    queued.record_market_transaction("mt", 3, market_id="m", resource_type="food", buyer_id="a", seller_id="b",
                                     quantity=2, price_per_unit=1.5, total_cost=3.0)
    queued.record_bank_transaction("bt", 3, account_id="acct", agent_id="a", transaction_type="deposit",
                                   amount=5, balance_after=10.5, timestamp=at)
    with pytest.raises(AssertionError, match="reference path"):
        queued.record_memory("agent_1", "numpy step", np.int64(3))  # not the usual type: the models decide
