"""The drop-in handler's normalization of loose simulation data, the JSON converter, broker and prefix resolution."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from producers.errors import InvalidRecordError
from producers._json import MAX_DEPTH, json_text
from producers.handler import (
    BOOTSTRAP_ENV,
    TOPIC_PREFIX_ENV,
    _tags,
    _text,
    _timestamp,
    resolve_bootstrap,
    resolve_topic_prefix,
)

UTC = dt.timezone.utc


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Pair(enum.Enum):
    ORIGIN = (0, 0)


class Kind(enum.StrEnum):
    TRADE = "trade"


@dataclasses.dataclass
class Position:
    x: float
    y: float


@dataclasses.dataclass
class Birth:
    child: str
    parents: tuple[str, str]
    color: Color
    at: dt.datetime
    where: Position


class Snapshot(BaseModel):
    agents: int
    level: Level


# --- the JSON converter (details, config_snapshot) ------------------------------------------
# Until issue 6 the handler silently turned NaN/inf into null, sets into lists in arbitrary
# order, and unknown objects (bytes included) into their str(); those now raise, naming the path.


def as_json(value: Any) -> Any:
    """What the converter sends for `value`, parsed back."""
    return json.loads(json_text(value, "simulation_events", "details"))


def rejection(value: Any) -> InvalidRecordError:
    with pytest.raises(InvalidRecordError) as info:
        json_text(value, "simulation_events", "details")
    assert (info.value.table, info.value.field) == ("simulation_events", "details")
    return info.value


@pytest.mark.parametrize("value", [None, "text", "", True, False, 0, -5, 2**70, 1.5, -0.0, [], {}])
def test_json_values_pass_through(value: Any) -> None:
    out = as_json(value)
    assert out == value
    assert type(out) is type(value)


@pytest.mark.parametrize(
    ("value", "where", "shown"),
    [
        (float("nan"), "details", "NaN is not valid JSON"),
        ([1.0, float("inf")], "details[1]", "inf is not valid JSON"),
        ({"price": float("-inf")}, 'details["price"]', "-inf is not valid JSON"),
        ({"price": float("nan")}, 'details["price"]', "NaN is not valid JSON"),
        ({"a": [{"b": np.float64("nan")}]}, 'details["a"][0]["b"]', "NaN is not valid JSON"),
    ],
)
def test_non_finite_floats_are_rejected_with_their_path(value: Any, where: str, shown: str) -> None:
    # Used to become null silently.
    err = rejection(value)
    assert str(err).startswith(f"simulation_events.details: {shown} at {where}")


@pytest.mark.parametrize(
    ("member", "expected"),
    [(Color.RED, "red"), (Level.HIGH, 2), (Kind.TRADE, "trade"), (Pair.ORIGIN, [0, 0])],
)
def test_enum_members_become_their_values(member: enum.Enum, expected: Any) -> None:
    out = as_json(member)
    assert out == expected
    assert type(out) is type(expected)


def test_tuples_become_lists() -> None:
    assert as_json((1, "a", (2, 3))) == [1, "a", [2, 3]]


@pytest.mark.parametrize("value", [{3, 1, 2}, frozenset({"b", "a"}), {"seen": {1}}])
def test_sets_are_rejected_not_listed_in_arbitrary_order(value: Any) -> None:
    assert "a set is not valid JSON" in str(rejection(value))


def test_nested_dicts_with_enum_and_non_string_keys() -> None:
    value = {Color.RED: {Level.LOW: (Color.BLUE, [1.5, 2.5])}, 7: None, 2.5: 1, True: 0, "plain": [Kind.TRADE]}
    assert as_json(value) == {"red": {"1": ["blue", [1.5, 2.5]]}, "7": None, "2.5": 1, "true": 0, "plain": ["trade"]}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({None: 1}, "a NoneType dict key"),
        ({(1, 2): 1}, "a tuple dict key"),
        ({float("nan"): 1}, "NaN is not valid JSON"),
        ({1: "a", "1": "b"}, "two keys become '1'"),
        ({"1": "a", 1: "b"}, "two keys become '1'"),
        ({Color.RED: 1, "red": 2}, "two keys become 'red'"),
        ({True: 1, "true": 2}, "two keys become 'true'"),
    ],
)
def test_keys_that_json_cannot_hold_or_that_collide_are_rejected(value: Any, reason: str) -> None:
    # json.dumps would write {"1":"a","1":"b"} and jsonb would keep only the last.
    assert reason in str(rejection(value))


def test_datetimes_dates_and_times_become_iso_text() -> None:
    aware = dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert as_json(aware) == "2024-05-01T12:30:15.250000+02:00"
    assert as_json(dt.datetime(2024, 5, 1, 12, 30)) == "2024-05-01T12:30:00"
    assert as_json(dt.date(2024, 5, 1)) == "2024-05-01"
    assert as_json(dt.time(8, 15)) == "08:15:00"


def test_uuids_become_text() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert as_json(u) == "12345678-1234-5678-1234-567812345678"
    assert as_json({"ids": (u,)}) == {"ids": ["12345678-1234-5678-1234-567812345678"]}


@pytest.mark.parametrize(
    ("value", "text"),
    [(Decimal("12.50"), "12.50"), (Decimal("-0"), "-0"), (Decimal("1E+3"), "1E+3"),
     (Decimal("0.1000000000000000000000000001"), "0.1000000000000000000000000001")],
)
def test_finite_decimals_become_json_numbers_with_their_digits(value: Decimal, text: str) -> None:
    assert json_text({"price": value}, "simulation_events", "details") == f'{{"price":{text}}}'
    assert json.loads(text, parse_float=Decimal, parse_int=Decimal) == value


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN")])
def test_non_finite_decimals_are_rejected(value: Decimal) -> None:
    assert "is not valid JSON at details" in str(rejection([value]))


def test_dataclasses_become_dicts_recursively() -> None:
    birth = Birth("agent_9", ("agent_1", "agent_2"), Color.BLUE, dt.datetime(2024, 1, 1, tzinfo=UTC),
                  Position(1.0, -2.5))
    assert as_json(birth) == {
        "child": "agent_9",
        "parents": ["agent_1", "agent_2"],
        "color": "blue",
        "at": "2024-01-01T00:00:00+00:00",
        "where": {"x": 1.0, "y": -2.5},
    }
    err = rejection({"birth": dataclasses.replace(birth, where=Position(1.0, float("nan")))})
    assert 'at details["birth"]["where"]["y"]' in str(err)


def test_a_dataclass_type_is_not_treated_as_an_instance() -> None:
    assert "type is not JSON-representable" in str(rejection(Position))


def test_pydantic_models_become_dicts() -> None:
    assert as_json(Snapshot(agents=3, level=Level.HIGH)) == {"agents": 3, "level": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(3), 3), (np.float32(0.5), 0.5), (np.bool_(False), False), (np.str_("x"), "x"),
        (np.array(2.5), 2.5), (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (np.array([]), []), ({np.int64(1): np.array([True])}, {"1": [True]}),
    ],
)
def test_numpy_scalars_and_arrays_become_plain_json(value: Any, expected: Any) -> None:
    out = as_json(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    "value", [np.float64("inf"), np.datetime64("2024-01-01T00:00:00.000000000"), np.array(["2024"], "M8[ns]")]
)
def test_numpy_values_without_a_faithful_json_form_are_rejected(value: Any) -> None:
    # A nanosecond datetime64's item() is an int: it would have become a number silently.
    rejection({"x": value})


class Thing:
    def __str__(self) -> str:
        return "a thing"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Thing(), "Thing is not JSON-representable"),
        ([Thing()], "Thing is not JSON-representable at details[0]"),
        (b"raw", "bytes are not valid JSON"),
        ({"blob": bytearray(b"x")}, 'bytes are not valid JSON (decode them to str first) at details["blob"]'),
        ({"z": 1j}, "complex is not JSON-representable"),
        ("nul\x00", "a NUL character cannot be stored in jsonb"),
        ({"name": "lone \udc80"}, 'a lone surrogate is not valid UTF-8 at details["name"]'),
    ],
)
def test_other_values_are_rejected_naming_the_path(value: Any, reason: str) -> None:
    # Unknown objects used to become their str(), bytes their repr text.
    assert reason in str(rejection(value))


def test_cycles_are_rejected_naming_where_they_close() -> None:
    loop: dict[str, Any] = {"a": [1]}
    loop["a"].append(loop)
    err = rejection({"outer": loop})
    assert 'a cycle (a container inside itself) is not valid JSON at details["outer"]["a"][1]' in str(err)
    # Sharing one object in two places is not a cycle.
    shared = [1, 2]
    assert as_json({"x": shared, "y": shared}) == {"x": [1, 2], "y": [1, 2]}


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_bounded_without_a_recursion_error() -> None:
    assert as_json(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 5000):
        err = rejection(nested(depth))
        assert f"nesting deeper than {MAX_DEPTH} levels" in str(err)
        assert str(err).count("[0]") == MAX_DEPTH


_plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
_plain_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _plain_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_plain_text, inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_plain_json)
def test_plain_json_is_written_exactly_as_json_dumps_writes_it(value: Any) -> None:
    # Same bytes as before the converter existed: a re-sent record compares equal.
    assert json_text(value, "simulation_events", "details") == json.dumps(value, separators=(",", ":"))


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: they must be rejected, never nulled
    st.text(max_size=8),
    st.sampled_from([Color.RED, Level.LOW, Kind.TRADE, Pair.ORIGIN]),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.uuids(),
    st.decimals(places=3),
)
_key = st.one_of(st.text(max_size=5), st.integers(), st.sampled_from([Color.BLUE, Level.HIGH]))
_nested = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(_key, inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_nested)
def test_result_is_strict_json_or_an_invalid_record(value: Any) -> None:
    try:
        text = json_text(value, "simulation_events", "details")
    except InvalidRecordError as e:
        assert " at details" in str(e)
        return
    parsed = json.loads(text, parse_constant=_no_constant)  # strict: no NaN or Infinity
    assert json.loads(json_text(parsed, "simulation_events", "details")) == parsed
    text.encode("utf-8")  # no lone surrogates reach the record


def _no_constant(name: str) -> Any:
    raise AssertionError(f"{name} in the converter's output")


# --- text fields and tags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("agent_7", "agent_7"), (None, None), (Kind.TRADE, "trade"), (Level.HIGH, "2"), (np.str_("a"), "a"),
     (np.int64(7), "7"), (7, "7"), (2.5, "2.5"), (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001")],
)
def test_text_fields_take_text_and_convert_numbers_enums_and_uuids(value: Any, expected: str | None) -> None:
    out = _text(value, "agent_memories", "agent_id_str")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value", [["agent_0"], ("a",), {"a": 1}, b"agent", True, object(), Position(1, 2)])
def test_other_text_values_are_rejected_not_stringified(value: Any) -> None:
    # Used to be sent as their str(): "['agent_0']", "b'agent'", "True"...
    with pytest.raises(InvalidRecordError) as info:
        _text(value, "agent_memories", "agent_id_str")
    assert (info.value.table, info.value.field) == ("agent_memories", "agent_id_str")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("trade", ["trade"]), (["a", Kind.TRADE], ["a", "trade"]), (("a", "b"), ["a", "b"]),
     (np.array(["x", "y"]), ["x", "y"]), ([None], [None])],
)
def test_tags_are_a_str_or_an_ordered_sequence(value: Any, expected: list | None) -> None:
    assert _tags(value, "agent_memories") == expected


@pytest.mark.parametrize(("value", "field"), [({"b", "a"}, "tags"), (7, "tags"), (["ok", b"x"], "tags.1")])
def test_other_tags_are_rejected_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        _tags(value, "agent_memories")
    assert info.value.field == field


# --- _timestamp -----------------------------------------------------------------------------


@pytest.fixture
def local_tz_plus_0545() -> Iterator[None]:
    """Process-local time zone UTC+05:45 (POSIX TZ string: no zone database needed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "NPT-05:45"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, dt.datetime(1970, 1, 1, tzinfo=UTC)),
        (0.0, dt.datetime(1970, 1, 1, tzinfo=UTC)),
        (1714564800, dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (1714564800.25, dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        (-86400.5, dt.datetime(1969, 12, 30, 23, 59, 59, 500000, tzinfo=UTC)),
    ],
)
def test_epoch_seconds_are_utc(epoch: float, expected: dt.datetime, local_tz_plus_0545: None) -> None:
    out = _timestamp(epoch)
    assert out == expected
    assert out.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T14:00:00+02:00", dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00Z", dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456+00:00", dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T17:45:00", dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),  # naive: local (UTC+05:45)
    ],
)
def test_iso_text_is_converted_to_utc(text: str, expected: dt.datetime, local_tz_plus_0545: None) -> None:
    out = _timestamp(text)
    assert out == expected
    assert out.tzinfo == UTC


def test_aware_datetimes_are_converted_to_utc(local_tz_plus_0545: None) -> None:
    value = dt.datetime(2024, 5, 1, 4, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    out = _timestamp(value)
    assert out == dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert out.tzinfo == UTC
    assert (out.hour, out.minute) == (12, 0)


def test_naive_datetimes_are_taken_as_local_time(local_tz_plus_0545: None) -> None:
    out = _timestamp(dt.datetime(2024, 5, 1, 17, 45))
    assert out == dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert out.tzinfo == UTC


def test_enum_wrapped_epoch_and_none() -> None:
    class Tick(enum.Enum):
        START = 0

    assert _timestamp(Tick.START) == dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert _timestamp(None) is None


@pytest.mark.parametrize("value", [True, False, b"2024-05-01", [1, 2], dt.date(2024, 5, 1)])
def test_other_types_are_an_invalid_record_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidRecordError, match="real_timestamp") as info:
        _timestamp(value, "agent_memories")
    assert (info.value.table, info.value.field) == ("agent_memories", "real_timestamp")


@pytest.mark.parametrize("value", ["yesterday at noon", float("nan"), 1e20])
def test_unusable_values_are_an_invalid_record_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidRecordError, match="real_timestamp"):
        _timestamp(value, "market_transactions")


# --- resolve_bootstrap ----------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    return monkeypatch


def _config_obj(url: Any) -> Any:
    return SimpleNamespace(output=SimpleNamespace(database_url=url))


def _config_dict(url: Any) -> Any:
    return {"output": {"database_url": url}}


CONFIG_SHAPES = [_config_obj, _config_dict, lambda url: SimpleNamespace(output={"database_url": url})]
SHAPE_IDS = ["object", "dict", "object-with-dict"]


def test_explicit_wins_over_everything(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(BOOTSTRAP_ENV, "env:9092")
    got = resolve_bootstrap("kafka://arg:9092", _config_obj("kafka://cfg:9092"), "explicit:9092")
    assert got == "explicit:9092"


@pytest.mark.parametrize("shape", CONFIG_SHAPES, ids=SHAPE_IDS)
def test_db_url_kafka_wins_over_config_and_env(shape: Any, no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(BOOTSTRAP_ENV, "env:9092")
    assert resolve_bootstrap("kafka://arg:9092", shape("kafka://cfg:9092"), None) == "arg:9092"


@pytest.mark.parametrize("shape", CONFIG_SHAPES, ids=SHAPE_IDS)
def test_config_kafka_url_wins_over_env(shape: Any, no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(BOOTSTRAP_ENV, "env:9092")
    assert resolve_bootstrap(None, shape("kafka://cfg:9092"), None) == "cfg:9092"
    # A database URL that is not kafka:// is the original handler's SQL URL: ignored.
    assert resolve_bootstrap("postgresql://u@db/society", shape("kafka://cfg:9092"), None) == "cfg:9092"


@pytest.mark.parametrize("shape", CONFIG_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("url", [None, "sqlite:///society.db", "postgresql://u@db/society", 42])
def test_env_is_the_fallback(shape: Any, url: Any, no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(BOOTSTRAP_ENV, "env1:9092,env2:9092")
    assert resolve_bootstrap("sqlite:///x.db", shape(url), None) == "env1:9092,env2:9092"


@pytest.mark.parametrize(
    "config",
    [None, SimpleNamespace(), {}, SimpleNamespace(output=None), {"output": {}}, {"output": None}],
    ids=["none", "empty-object", "empty-dict", "object-output-none", "dict-output-empty", "dict-output-none"],
)
def test_config_without_a_url_falls_back_to_env(config: Any, no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(BOOTSTRAP_ENV, "env:9092")
    assert resolve_bootstrap(None, config, None) == "env:9092"


def test_kafka_url_keeps_the_broker_list_and_drops_slashes(no_env: pytest.MonkeyPatch) -> None:
    assert resolve_bootstrap("kafka://h1:9092,h2:9093/", None, None) == "h1:9092,h2:9093"
    assert resolve_bootstrap(None, _config_dict("kafka://h3:9092//"), None) == "h3:9092"


def test_empty_explicit_is_ignored(no_env: pytest.MonkeyPatch) -> None:
    assert resolve_bootstrap("kafka://arg:9092", None, "") == "arg:9092"


@pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
def test_nothing_names_a_broker_is_a_value_error(env: str | None, no_env: pytest.MonkeyPatch) -> None:
    if env is not None:
        no_env.setenv(BOOTSTRAP_ENV, env)
    with pytest.raises(ValueError, match=BOOTSTRAP_ENV):
        resolve_bootstrap("postgresql://u@db/society", _config_obj("sqlite:///x.db"), None)


@pytest.mark.parametrize("url", ["kafka://", "kafka:///"])
def test_kafka_url_without_a_host_is_a_value_error(url: str, no_env: pytest.MonkeyPatch) -> None:
    # BUG: producers/handler.py resolve_bootstrap returns "" for "kafka://",
    # a bootstrap list that names no broker.
    with pytest.raises(ValueError):
        resolve_bootstrap(url, None, None)


def test_env_value_is_read_at_call_time(no_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        resolve_bootstrap(None, None, None)
    no_env.setenv(BOOTSTRAP_ENV, "late:9092")
    assert resolve_bootstrap(None, None, None) == "late:9092"



# --- resolve_topic_prefix -------------------------------------------------------------------


@pytest.fixture
def no_prefix_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(TOPIC_PREFIX_ENV, raising=False)
    return monkeypatch


def test_prefix_explicit_wins_over_url_and_env(no_prefix_env: pytest.MonkeyPatch) -> None:
    no_prefix_env.setenv(TOPIC_PREFIX_ENV, "from-env")
    assert resolve_topic_prefix("kafka://h:9092/from-url", None, "explicit") == "explicit"


@pytest.mark.parametrize("shape", CONFIG_SHAPES, ids=SHAPE_IDS)
def test_prefix_from_the_path_of_the_url_that_names_the_broker(shape: Any, no_prefix_env: pytest.MonkeyPatch) -> None:
    no_prefix_env.setenv(TOPIC_PREFIX_ENV, "from-env")
    assert resolve_topic_prefix("kafka://h:9092/arg.p", shape("kafka://c:9092/cfg_p"), None) == "arg.p"
    assert resolve_topic_prefix(None, shape("kafka://c:9092/cfg_p/"), None) == "cfg_p"
    assert resolve_topic_prefix("sqlite:///x.db", shape("kafka://c:9092/cfg_p"), None) == "cfg_p"
    # The broker's URL has no path: the environment decides, not another URL.
    assert resolve_topic_prefix("kafka://h:9092/", shape("kafka://c:9092/cfg_p"), None) == "from-env"
    assert resolve_bootstrap("kafka://h1:9092,h2:9092/arg.p", None, None) == "h1:9092,h2:9092"


def test_prefix_from_the_environment_else_the_default(no_prefix_env: pytest.MonkeyPatch) -> None:
    assert resolve_topic_prefix("postgresql://u@db/society", None, None) == "society"
    no_prefix_env.setenv(TOPIC_PREFIX_ENV, "")
    assert resolve_topic_prefix(None, None, None) == "society"
    no_prefix_env.setenv(TOPIC_PREFIX_ENV, "staging")
    assert resolve_topic_prefix("kafka://h:9092", None, None) == "staging"


@pytest.mark.parametrize(
    ("db_url", "explicit", "env", "source"),
    [
        (None, "bad prefix", None, "topic_prefix="),
        (None, "", None, "topic_prefix="),
        ("kafka://h:9092/a/b", None, None, "the path of 'kafka://h:9092/a/b'"),
        ("kafka://h:9092/caf\u00e9", None, None, "the path of"),
        (None, None, "no/slashes", TOPIC_PREFIX_ENV),
    ],
)
def test_an_invalid_prefix_is_a_clear_value_error(
    db_url: str | None, explicit: str | None, env: str | None, source: str, no_prefix_env: pytest.MonkeyPatch
) -> None:
    if env is not None:
        no_prefix_env.setenv(TOPIC_PREFIX_ENV, env)
    with pytest.raises(ValueError, match=f"invalid topic prefix .* from {re.escape(source)}"):
        resolve_topic_prefix(db_url, None, explicit)


def test_handler_takes_either_a_producer_or_settings() -> None:
    from producers import KafkaDatabaseHandler, ProducerSettings, SocietyProducer

    p = SocietyProducer(ProducerSettings(bootstrap_servers="127.0.0.1:9"))
    with pytest.raises(ValueError, match="not both"):
        KafkaDatabaseHandler(producer=p, topic_prefix="other")
    p.abort()


@pytest.mark.parametrize(("value", "reason"), [
    (Decimal("1E+999999"), "out of range for a jsonb number"),
    (Decimal("1E-20000"), "out of range for a jsonb number"),
    (10**5000, "digits is too long"),
], ids=["huge Decimal", "tiny Decimal", "5000-digit int"])
def test_numbers_jsonb_cannot_hold_are_refused_naming_the_path(value, reason):
    # PostgreSQL would refuse these in the worker (numeric overflow): refuse them at the call site.
    with pytest.raises(InvalidRecordError, match=re.escape(reason) + r'.* at details\["v"\]'):
        json_text({"v": value}, "simulation_events", "details")
