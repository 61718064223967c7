"""Bad input is rejected at the call site by ``validate_record``, naming the field.

Every case asserts the typed error (``InvalidRecordError``), its ``.table`` and
``.field``, and that the message has the documented shape
``"<table>.<field>: <reason> (got <value>)"``. Limits come from ``ddl/``:
VARCHAR(255)/(50)/(100), INTEGER, REAL (float4), TIMESTAMPTZ, JSONB, and
PostgreSQL's refusal of NUL characters.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from producers import tables
from producers.errors import InvalidRecordError
from producers.models import INT4_MAX, MAX_TEXT_CHARS, MODELS, REAL_MAX, validate_record

RUN = uuid.UUID("0b6f3c5e-8f0a-4a39-9a57-1f3b2d4c5e6f")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CEST = timezone(timedelta(hours=2))


def valid(table: str) -> dict[str, Any]:
    """A fresh, minimal valid record of `table` (required fields only)."""
    return {
        tables.SIMULATION_RUNS: lambda: {"run_id": RUN, "start_time": T0, "updated_at": T0},
        tables.AGENTS: lambda: {"creation_run_id": RUN, "agent_id_str": "agent_0", "updated_at": T0},
        tables.AGENT_MEMORIES: lambda: {
            "memory_id": uuid.uuid4(),
            "agent_id_str": "agent_0",
            "simulation_run_id": RUN,
            "step_timestamp": 3,
            "content": "saw a market",
        },
        tables.MARKET_TRANSACTIONS: lambda: {
            "transaction_sim_id": "tx-1",
            "simulation_run_id": RUN,
            "step_timestamp": 3,
            "market_id": "food",
            "resource_type": "grain",
            "buyer_agent_id": "agent_0",
            "seller_agent_id": "agent_1",
            "quantity": 2.0,
            "price_per_unit": 1.5,
            "total_cost": 3.0,
        },
        tables.BANKING_TRANSACTIONS: lambda: {
            "transaction_sim_id": "bt-1",
            "simulation_run_id": RUN,
            "step_timestamp": 3,
            "account_id": "acct-0",
            "agent_id_str": "agent_0",
            "transaction_type": "deposit",
            "amount": 10.0,
            "balance_after": 110.0,
        },
        tables.SIMULATION_EVENTS: lambda: {
            "event_uid": uuid.uuid4(),
            "simulation_run_id": RUN,
            "step_timestamp": 3,
            "event_type": "birth",
        },
    }[table]()


def assert_rejected(table: str, field: str, value: Any, reason: str | None = None) -> InvalidRecordError:
    """`table` record with `field` set to `value` is rejected, naming `field` (a dotted path)."""
    data = valid(table)
    top = field.split(".")[0]
    if value is _MISSING:
        del data[top]
    elif top == field:
        data[field] = value
    else:  # "tags.1": the value is the whole list
        data[top] = value
    with pytest.raises(InvalidRecordError) as caught:
        validate_record(table, data)
    err = caught.value
    assert err.table == table
    assert err.field == field, str(err)
    message = str(err)
    assert message.startswith(f"{table}.{field}: "), message
    assert field in message
    assert message.endswith(")") and " (got " in message, message
    if reason is not None:
        assert reason in err.reason, err.reason
        assert reason in message
    return err


_MISSING = object()

FLOAT_FIELDS = [
    (tables.MARKET_TRANSACTIONS, "quantity"),
    (tables.MARKET_TRANSACTIONS, "price_per_unit"),
    (tables.MARKET_TRANSACTIONS, "total_cost"),
    (tables.BANKING_TRANSACTIONS, "amount"),
    (tables.BANKING_TRANSACTIONS, "balance_after"),
]

STEP_FIELDS = [
    (tables.AGENT_MEMORIES, "step_timestamp"),
    (tables.MARKET_TRANSACTIONS, "step_timestamp"),
    (tables.BANKING_TRANSACTIONS, "step_timestamp"),
    (tables.SIMULATION_EVENTS, "step_timestamp"),
    (tables.AGENTS, "creation_step"),
]

# (table, column, n) for every VARCHAR(n) column in ddl/0001_simulation_tables.sql.
VARCHAR_FIELDS = [
    (tables.SIMULATION_RUNS, "status", 50),
    (tables.AGENTS, "agent_id_str", 255),
    (tables.AGENTS, "initial_agent_type", 50),
    (tables.AGENT_MEMORIES, "agent_id_str", 255),
    (tables.AGENT_MEMORIES, "related_agent_id", 255),
    (tables.MARKET_TRANSACTIONS, "transaction_sim_id", 255),
    (tables.MARKET_TRANSACTIONS, "market_id", 255),
    (tables.MARKET_TRANSACTIONS, "resource_type", 50),
    (tables.MARKET_TRANSACTIONS, "buyer_agent_id", 255),
    (tables.MARKET_TRANSACTIONS, "seller_agent_id", 255),
    (tables.MARKET_TRANSACTIONS, "buy_order_id", 255),
    (tables.MARKET_TRANSACTIONS, "sell_order_id", 255),
    (tables.BANKING_TRANSACTIONS, "transaction_sim_id", 255),
    (tables.BANKING_TRANSACTIONS, "account_id", 255),
    (tables.BANKING_TRANSACTIONS, "agent_id_str", 255),
    (tables.BANKING_TRANSACTIONS, "transaction_type", 50),
    (tables.BANKING_TRANSACTIONS, "counterparty_id", 255),
    (tables.BANKING_TRANSACTIONS, "reference_id", 255),
    (tables.SIMULATION_EVENTS, "event_type", 100),
    (tables.SIMULATION_EVENTS, "agent_id_primary", 255),
    (tables.SIMULATION_EVENTS, "agent_id_secondary", 255),
]

TEXT_FIELDS = [
    (tables.SIMULATION_RUNS, "notes"),
    (tables.AGENTS, "persona"),
    (tables.AGENT_MEMORIES, "content"),
    (tables.BANKING_TRANSACTIONS, "description"),
    (tables.SIMULATION_EVENTS, "description"),
]

JSON_FIELDS = [(tables.SIMULATION_RUNS, "config_snapshot"), (tables.SIMULATION_EVENTS, "details")]

TIME_FIELDS = [
    (tables.SIMULATION_RUNS, "start_time"),
    (tables.SIMULATION_RUNS, "end_time"),
    (tables.SIMULATION_RUNS, "updated_at"),
    (tables.AGENTS, "updated_at"),
    (tables.AGENT_MEMORIES, "real_timestamp"),
    (tables.MARKET_TRANSACTIONS, "real_timestamp"),
    (tables.BANKING_TRANSACTIONS, "real_timestamp"),
    (tables.SIMULATION_EVENTS, "real_timestamp"),
]

UUID_FIELDS = [
    (tables.SIMULATION_RUNS, "run_id"),
    (tables.AGENTS, "creation_run_id"),
    (tables.AGENT_MEMORIES, "memory_id"),
    (tables.AGENT_MEMORIES, "simulation_run_id"),
    (tables.MARKET_TRANSACTIONS, "simulation_run_id"),
    (tables.BANKING_TRANSACTIONS, "simulation_run_id"),
    (tables.SIMULATION_EVENTS, "event_uid"),
    (tables.SIMULATION_EVENTS, "simulation_run_id"),
]

ALL_STRING_FIELDS = [(t, f) for t, f, _ in VARCHAR_FIELDS] + TEXT_FIELDS

REQUIRED_FIELDS = [
    (table, name) for table, model in MODELS.items() for name, info in model.model_fields.items() if info.is_required()
]


def _ids(cases: list[tuple]) -> list[str]:
    return [".".join(str(p) for p in case[:2]) + (f"={case[2]!r}"[:30] if len(case) > 2 else "") for case in cases]


# --- valid records --------------------------------------------------------------------------


@pytest.mark.parametrize("table", tables.TABLES)
def test_minimal_valid_record_passes_with_optionals_filled_as_none(table: str) -> None:
    data = valid(table)
    out = validate_record(table, data)
    assert set(out) == set(MODELS[table].model_fields)
    for name, value in out.items():
        if name not in data:
            assert value is None, name
        elif isinstance(data[name], uuid.UUID | datetime):
            assert out[name] == data[name]


def test_full_memory_record_passes_unchanged() -> None:
    data = {
        **valid(tables.AGENT_MEMORIES),
        "real_timestamp": T0,
        "importance": 0.25,
        "tags": ["market", "grain", ""],
        "related_agent_id": "agent_1",
    }
    assert validate_record(tables.AGENT_MEMORIES, data) == data


@pytest.mark.parametrize(("table", "field"), TIME_FIELDS, ids=_ids(TIME_FIELDS))
def test_aware_datetimes_are_normalized_to_utc(table: str, field: str) -> None:
    local = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=CEST)
    out = validate_record(table, {**valid(table), field: local})
    assert out[field] == local  # same instant
    assert out[field].tzinfo == timezone.utc
    assert (out[field].hour, out[field].minute, out[field].microsecond) == (12, 30, 123456)


def test_iso_text_with_offset_becomes_a_utc_datetime() -> None:
    out = validate_record(tables.SIMULATION_EVENTS, {**valid(tables.SIMULATION_EVENTS), "real_timestamp": "2024-05-01T14:00:00+02:00"})
    assert out["real_timestamp"] == T0
    assert out["real_timestamp"].tzinfo == timezone.utc


def test_int_importance_becomes_float() -> None:
    for given in (0, 1):
        out = validate_record(tables.AGENT_MEMORIES, {**valid(tables.AGENT_MEMORIES), "importance": given})
        assert out["importance"] == float(given)
        assert type(out["importance"]) is float


@pytest.mark.parametrize(("table", "field"), FLOAT_FIELDS, ids=_ids(FLOAT_FIELDS))
def test_int_reals_become_float_and_limits_pass(table: str, field: str) -> None:
    for given in (7, -7, 0, REAL_MAX, -REAL_MAX, 1e-45):
        out = validate_record(table, {**valid(table), field: given})
        assert out[field] == given
        assert type(out[field]) is float


def test_uuid_text_becomes_uuid() -> None:
    out = validate_record(tables.AGENTS, {**valid(tables.AGENTS), "creation_run_id": str(RUN)})
    assert out["creation_run_id"] == RUN
    assert isinstance(out["creation_run_id"], uuid.UUID)


@pytest.mark.parametrize(("table", "field"), STEP_FIELDS, ids=_ids(STEP_FIELDS))
def test_step_limits_pass(table: str, field: str) -> None:
    for given in (0, INT4_MAX):
        assert validate_record(table, {**valid(table), field: given})[field] == given


@pytest.mark.parametrize(("table", "field", "n"), VARCHAR_FIELDS, ids=_ids(VARCHAR_FIELDS))
def test_varchar_at_its_length_passes_counting_characters_not_bytes(table: str, field: str, n: int) -> None:
    text = "é" * (n - 1) + "😀"  # n characters, 2n+2 UTF-8 bytes: VARCHAR(n) counts characters
    assert validate_record(table, {**valid(table), field: text})[field] == text


@pytest.mark.parametrize(("table", "field"), TEXT_FIELDS, ids=_ids(TEXT_FIELDS))
def test_text_at_max_text_chars_passes(table: str, field: str) -> None:
    text = "ü" * MAX_TEXT_CHARS
    assert validate_record(table, {**valid(table), field: text})[field] == text


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
def test_json_text_passes_unchanged(table: str, field: str) -> None:
    text = '{"agents": 2500, "markets": ["food", "tools"], "seed": null, "rate": 0.5, "name": "caf\\u00e9"}'
    assert validate_record(table, {**valid(table), field: text})[field] == text


# --- wrong types ----------------------------------------------------------------------------

WRONG_TYPES = [
    # str for int step (numeric strings included)
    *[(t, f, "5", "valid integer") for t, f in STEP_FIELDS],
    (tables.AGENT_MEMORIES, "step_timestamp", "five", "valid integer"),
    (tables.MARKET_TRANSACTIONS, "step_timestamp", 5.0, "valid integer"),
    (tables.BANKING_TRANSACTIONS, "step_timestamp", True, "valid integer"),
    (tables.SIMULATION_EVENTS, "step_timestamp", None, "valid integer"),
    # int for string id
    (tables.AGENTS, "agent_id_str", 7, "valid string"),
    (tables.AGENT_MEMORIES, "agent_id_str", 7, "valid string"),
    (tables.MARKET_TRANSACTIONS, "buyer_agent_id", 12, "valid string"),
    (tables.MARKET_TRANSACTIONS, "transaction_sim_id", 1001, "valid string"),
    (tables.BANKING_TRANSACTIONS, "account_id", 3, "valid string"),
    (tables.SIMULATION_EVENTS, "event_type", 1, "valid string"),
    (tables.SIMULATION_RUNS, "status", 0, "valid string"),
    (tables.AGENT_MEMORIES, "content", b"bytes are not text", "valid string"),
    (tables.AGENT_MEMORIES, "content", None, "valid string"),
    # bool / numeric strings for floats
    *[(t, f, True, "must be a number") for t, f in FLOAT_FIELDS],
    *[(t, f, "1.5", "must be a number") for t, f in FLOAT_FIELDS],
    (tables.AGENT_MEMORIES, "importance", False, "must be a number"),
    (tables.AGENT_MEMORIES, "importance", "0.5", "must be a number"),
    (tables.MARKET_TRANSACTIONS, "quantity", None, "must be a number"),
    # uuids
    *[(t, f, 12345, "UUID") for t, f in UUID_FIELDS],
    (tables.AGENT_MEMORIES, "memory_id", "not-a-uuid", "UUID"),
    # datetimes
    (tables.SIMULATION_RUNS, "start_time", "yesterday", None),
    # tags: a list of strings
    (tables.AGENT_MEMORIES, "tags", "market", "valid list"),
    (tables.AGENT_MEMORIES, "tags.1", ["market", 3], "valid string"),
    (tables.AGENT_MEMORIES, "tags.0", [None], "valid string"),
]


@pytest.mark.parametrize(("table", "field", "value", "reason"), WRONG_TYPES, ids=_ids(WRONG_TYPES))
def test_wrong_types_are_rejected(table: str, field: str, value: Any, reason: str | None) -> None:
    err = assert_rejected(table, field, value, reason)
    shown = value[int(field.split(".")[1])] if "." in field else value
    assert err.value == shown or err.value is shown


@pytest.mark.parametrize(("table", "field"), REQUIRED_FIELDS, ids=_ids(REQUIRED_FIELDS))
def test_missing_required_fields_are_rejected(table: str, field: str) -> None:
    assert_rejected(table, field, _MISSING, "Field required")


def test_every_table_has_required_fields_covered() -> None:
    assert {t for t, _ in REQUIRED_FIELDS} == set(tables.TABLES)


def test_not_a_mapping_is_rejected_as_the_whole_record() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        validate_record(tables.AGENTS, None)  # type: ignore[arg-type]
    assert caught.value.field == "<record>"
    assert str(caught.value).startswith("agents.<record>: ")


# --- numbers out of range -------------------------------------------------------------------

IMPORTANCE = [
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    (float("-inf"), "finite"),
    (1.0000001, "less than or equal to 1"),
    (2, "less than or equal to 1"),
    (-0.01, "greater than or equal to 0"),
    (-1, "greater than or equal to 0"),
]


@pytest.mark.parametrize(("value", "reason"), IMPORTANCE, ids=[repr(v) for v, _ in IMPORTANCE])
def test_importance_must_be_finite_and_within_0_and_1(value: float, reason: str) -> None:
    err = assert_rejected(tables.AGENT_MEMORIES, "importance", value, reason)
    assert err.value == value or (math.isnan(err.value) and math.isnan(value))


#: FLT_MAX plus half its last unit: the smallest double that rounds to float4 infinity.
FLOAT4_OVERFLOW = 3.4028235677973366e38
REALS = [(float("nan"), "finite"), (float("inf"), "finite"), (float("-inf"), "finite"),
         (3.5e38, "REAL"), (-3.5e38, "REAL"), (1e300, "REAL"), (int(REAL_MAX) * 2, "REAL"),
         (FLOAT4_OVERFLOW, "REAL"), (-FLOAT4_OVERFLOW, "REAL")]


@pytest.mark.parametrize(("table", "field"), FLOAT_FIELDS, ids=_ids(FLOAT_FIELDS))
def test_reals_that_round_to_float4_max_fit_and_negative_zero_keeps_its_sign(table: str, field: str) -> None:
    # 3.4028235e38 is FLT_MAX printed shortest (PostgreSQL's REAL output): above REAL_MAX as a double.
    for given in (3.4028235e38, -3.4028235e38, math.nextafter(FLOAT4_OVERFLOW, 0), -0.0):
        out = validate_record(table, {**valid(table), field: given})
        assert out[field] == given and math.copysign(1, out[field]) == math.copysign(1, given)


@pytest.mark.parametrize(("table", "field"), FLOAT_FIELDS, ids=_ids(FLOAT_FIELDS))
@pytest.mark.parametrize(("value", "reason"), REALS, ids=[repr(v)[:12] for v, _ in REALS])
def test_reals_must_be_finite_and_fit_float4(table: str, field: str, value: float, reason: str) -> None:
    assert_rejected(table, field, value, reason)


@pytest.mark.parametrize(("table", "field"), FLOAT_FIELDS, ids=_ids(FLOAT_FIELDS))
def test_int_too_large_for_any_float_is_an_invalid_record(table: str, field: str) -> None:
    # BUG: producers/models.py _number() calls float(10**400), which raises
    # OverflowError (not ValueError), so pydantic lets it escape un-typed.
    assert_rejected(table, field, 10**400)


@pytest.mark.parametrize(("table", "field"), STEP_FIELDS, ids=_ids(STEP_FIELDS))
@pytest.mark.parametrize("value", [-1, INT4_MAX + 1, 2**63])
def test_steps_must_fit_a_non_negative_int4(table: str, field: str, value: int) -> None:
    err = assert_rejected(table, field, value)
    assert err.value == value


# --- strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "field", "n"), VARCHAR_FIELDS, ids=_ids(VARCHAR_FIELDS))
def test_varchar_one_past_its_length_is_rejected(table: str, field: str, n: int) -> None:
    assert_rejected(table, field, "é" * (n + 1), f"at most {n} characters")


@pytest.mark.parametrize(("table", "field"), TEXT_FIELDS, ids=_ids(TEXT_FIELDS))
def test_text_past_max_text_chars_is_rejected(table: str, field: str) -> None:
    assert_rejected(table, field, "a" * (MAX_TEXT_CHARS + 1), f"at most {MAX_TEXT_CHARS} characters")


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
def test_json_text_past_its_limit_is_rejected(table: str, field: str) -> None:
    too_long = '"' + "a" * (MAX_TEXT_CHARS * 4) + '"'
    assert_rejected(table, field, too_long, "at most")


def test_oversize_tag_is_rejected_by_position() -> None:
    assert_rejected(tables.AGENT_MEMORIES, "tags.2", ["a", "b", "x" * 256], "at most 255 characters")


@pytest.mark.parametrize(("table", "field"), ALL_STRING_FIELDS, ids=_ids(ALL_STRING_FIELDS))
def test_nul_characters_are_rejected(table: str, field: str) -> None:
    err = assert_rejected(table, field, "abc\x00def", "NUL")
    assert err.value == "abc\x00def"


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
def test_raw_nul_in_json_text_is_rejected(table: str, field: str) -> None:
    assert_rejected(table, field, '{"a": "x\x00y"}', "NUL")


def test_nul_in_a_tag_is_rejected_by_position() -> None:
    assert_rejected(tables.AGENT_MEMORIES, "tags.1", ["ok", "b\x00d"], "NUL")


@pytest.mark.parametrize(("table", "field"), [(tables.AGENT_MEMORIES, "content"), (tables.AGENTS, "agent_id_str")])
def test_lone_surrogates_are_rejected(table: str, field: str) -> None:
    # Not encodable as UTF-8, so neither Avro nor PostgreSQL could carry it.
    assert_rejected(table, field, "abc\ud800")


# --- datetimes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "field"), TIME_FIELDS, ids=_ids(TIME_FIELDS))
def test_naive_datetimes_are_rejected(table: str, field: str) -> None:
    err = assert_rejected(table, field, datetime(2024, 5, 1, 12, 0), "timezone")
    assert err.value == datetime(2024, 5, 1, 12, 0)


@pytest.mark.parametrize(("table", "field"), TIME_FIELDS[:2], ids=_ids(TIME_FIELDS[:2]))
def test_naive_iso_text_is_rejected(table: str, field: str) -> None:
    assert_rejected(table, field, "2024-05-01T12:00:00", "timezone")


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))),  # after year 9999 in UTC
    ],
    ids=["before-year-1-utc", "after-year-9999-utc"],
)
def test_aware_datetime_not_representable_in_utc_is_an_invalid_record(value: datetime) -> None:
    # BUG: producers/models.py _utc() lets OverflowError from astimezone() escape.
    assert_rejected(tables.SIMULATION_EVENTS, "real_timestamp", value)


# --- JSON text ------------------------------------------------------------------------------

BAD_JSON = ["{", "{'a': 1}", "", "undefined", "[1,]", '{"a": 1} trailing', "True"]


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
@pytest.mark.parametrize("text", BAD_JSON)
def test_invalid_json_text_is_rejected(table: str, field: str, text: str) -> None:
    err = assert_rejected(table, field, text, "not valid JSON")
    assert err.value == text


# Python's json module accepts these, PostgreSQL's JSONB does not (checked on
# PostgreSQL 15: "invalid input syntax for type json", "unsupported Unicode
# escape sequence", "stack depth limit exceeded"). A record carrying them
# validates at the producer and is only refused by the worker: it must fail here.
JSONB_REFUSES = {
    "nan": '{"x": NaN}',
    "infinity": "[Infinity]",
    "minus-infinity": "-Infinity",
    "escaped-nul": '{"x": "a\\u0000b"}',
    "escaped-lone-surrogate": '"\\ud800"',
    "nested-100k-deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
@pytest.mark.parametrize("text", list(JSONB_REFUSES.values()), ids=list(JSONB_REFUSES))
def test_json_text_that_jsonb_refuses_is_rejected(table: str, field: str, text: str) -> None:
    # BUG: producers/models.py _json_text() only runs json.loads(), which
    # accepts NaN/Infinity and \u0000 / lone-surrogate escapes, and raises
    # RecursionError (not ValueError) on deep nesting.
    assert_rejected(table, field, text)


@pytest.mark.parametrize(("table", "field"), JSON_FIELDS, ids=_ids(JSON_FIELDS))
def test_json_text_with_an_escaped_backslash_before_u0000_passes(table: str, field: str) -> None:
    # The JSON string holds the six characters \u0000, not a NUL: JSONB stores it.
    text = '{"x": "a\\\\u0000b", "y": "\\\\\\\\u0000"}'
    assert validate_record(table, {**valid(table), field: text})[field] == text


# --- unknown fields -------------------------------------------------------------------------

EXTRA = [
    (tables.SIMULATION_RUNS, "config"),
    (tables.AGENTS, "agent_id"),
    (tables.AGENT_MEMORIES, "step"),
    (tables.MARKET_TRANSACTIONS, "transaction_id_pk"),
    (tables.BANKING_TRANSACTIONS, "transaction_id"),
    (tables.SIMULATION_EVENTS, "event_id"),
]


@pytest.mark.parametrize(("table", "field"), EXTRA, ids=_ids(EXTRA))
def test_unknown_extra_fields_are_rejected(table: str, field: str) -> None:
    err = assert_rejected(table, field, 1, "Extra inputs are not permitted")
    assert err.value == 1


def test_error_value_is_shortened_in_the_message_but_kept_whole_on_the_error() -> None:
    long = "x" * 300
    err = assert_rejected(tables.SIMULATION_RUNS, "status", long, "at most 50 characters")
    assert err.value == long
    assert len(str(err)) < 200
    assert str(err).endswith("...)")
