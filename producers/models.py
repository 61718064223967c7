"""Pydantic models of the six records, one per table, validated at the call site.

Limits mirror the PostgreSQL columns in ``ddl/`` so a record that validates
here also fits its table: VARCHAR lengths, INTEGER range, finite REAL values,
no NUL characters (PostgreSQL text cannot hold them), timezone-aware times.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
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
)

from producers import tables
from producers.errors import InvalidRecordError

#: Largest text we send in one record; Kafka's default message limit is 1 MiB.
MAX_TEXT_CHARS: Final = 100_000
#: Largest finite float4 (PostgreSQL REAL).
REAL_MAX: Final = 3.4028234663852886e38
INT4_MAX: Final = 2**31 - 1


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
    if abs(value) > REAL_MAX:
        raise ValueError("out of range for REAL (float4)")
    return value


# \u0000 preceded by an even number of backslashes is a real escape, not "\\u0000".
_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON for PostgreSQL jsonb")


def _json_text(value: str) -> str:
    # Stricter than json.loads: only what PostgreSQL's jsonb accepts.
    # Text with a raw lone surrogate never gets here (StrictStr refuses it), so one can only come
    # from a \u escape: the re-encoding that finds it runs only when the text has escapes.
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


Str50 = _varchar(50)
Str100 = _varchar(100)
Str255 = _varchar(255)
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]
JsonText = Annotated[
    StrictStr, Field(max_length=MAX_TEXT_CHARS * 4), AfterValidator(_no_nul), AfterValidator(_json_text)
]
Step = Annotated[StrictInt, Field(ge=0, le=INT4_MAX)]
Real = Annotated[float, BeforeValidator(_number), AfterValidator(_real)]
Importance = Annotated[float, BeforeValidator(_number), Field(ge=0, le=1)]
UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]
Tags = Annotated[list[Str255], BeforeValidator(_ordered)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SimulationRun(_Record):
    """A state of a simulation run (sent at start and end)."""

    run_id: uuid.UUID
    config_snapshot: JsonText | None = None
    start_time: UtcTime
    end_time: UtcTime | None = None
    status: Str50 | None = None
    notes: Text | None = None
    updated_at: UtcTime


class Agent(_Record):
    """An agent as created in a run."""

    creation_run_id: uuid.UUID
    agent_id_str: Str255
    persona: Text | None = None
    initial_agent_type: Str50 | None = None
    creation_step: Step | None = None
    updated_at: UtcTime


class AgentMemory(_Record):
    """One memory of one agent."""

    memory_id: uuid.UUID
    agent_id_str: Str255
    simulation_run_id: uuid.UUID
    step_timestamp: Step
    real_timestamp: UtcTime | None = None
    content: Text
    importance: Importance | None = None
    tags: Tags | None = None
    related_agent_id: Str255 | None = None


class MarketTransaction(_Record):
    """One completed trade in a market."""

    transaction_sim_id: Str255
    simulation_run_id: uuid.UUID
    step_timestamp: Step
    real_timestamp: UtcTime | None = None
    market_id: Str255
    resource_type: Str50
    buyer_agent_id: Str255
    seller_agent_id: Str255
    quantity: Real
    price_per_unit: Real
    total_cost: Real
    buy_order_id: Str255 | None = None
    sell_order_id: Str255 | None = None


class BankingTransaction(_Record):
    """One banking transaction (deposit, withdrawal, transfer, interest, ...)."""

    transaction_sim_id: Str255
    simulation_run_id: uuid.UUID
    step_timestamp: Step
    real_timestamp: UtcTime | None = None
    account_id: Str255
    agent_id_str: Str255
    transaction_type: Str50
    amount: Real
    balance_after: Real
    description: Text | None = None
    counterparty_id: Str255 | None = None
    reference_id: Str255 | None = None


class SimulationEvent(_Record):
    """One significant event (birth, marriage, discovery, ...)."""

    event_uid: uuid.UUID
    simulation_run_id: uuid.UUID
    step_timestamp: Step
    real_timestamp: UtcTime | None = None
    event_type: Str100
    agent_id_primary: Str255 | None = None
    agent_id_secondary: Str255 | None = None
    details: JsonText | None = None
    description: Text | None = None


MODELS: Final[dict[str, type[_Record]]] = {
    tables.SIMULATION_RUNS: SimulationRun,
    tables.AGENTS: Agent,
    tables.AGENT_MEMORIES: AgentMemory,
    tables.MARKET_TRANSACTIONS: MarketTransaction,
    tables.BANKING_TRANSACTIONS: BankingTransaction,
    tables.SIMULATION_EVENTS: SimulationEvent,
}


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
