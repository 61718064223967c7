"""KafkaDatabaseHandler: a drop-in replacement for the simulation's DatabaseHandler.

Same constructor and async methods as the simulation's own handler, but each
call only validates and enqueues a record (microseconds) instead of running a
synchronous database transaction on the event loop. Data the simulation passes
loosely (enum members, epoch-second floats, numpy numbers, extra dict keys) is
normalized here; the typed SocietyProducer underneath stays strict. The
``details`` and ``config_snapshot`` values go through the same converter as
the typed producer's (``producers._json``): it never changes a value silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import os
import uuid
from typing import Any, Mapping

from producers import tables
from producers._json import json_text
from producers.errors import InvalidRecordError
from producers.producer import SocietyProducer
from producers.settings import ProducerSettings

#: Environment variable read when neither arguments nor config name a broker.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
KAFKA_URL_SCHEME = "kafka://"


def _plain(value: Any) -> Any:
    """Enum members become their value; numpy scalars become Python numbers."""
    if isinstance(value, enum.Enum):
        return value.value
    # numpy scalars (and 0-d arrays) have ndim 0; larger arrays become lists in to_json_value.
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _text(value: Any) -> str | None:
    value = _plain(value)
    return None if value is None else str(value) if not isinstance(value, str) else value


def _timestamp(value: Any, table: str = "record") -> dt.datetime | None:
    """Epoch seconds, ISO text or datetime; naive datetimes are taken as local time."""
    raw = value = _plain(value)
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.timezone.utc)
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError, OSError) as e:
        raise InvalidRecordError(table, "real_timestamp", raw, f"not a usable timestamp: {e}") from e
    raise InvalidRecordError(table, "real_timestamp", raw, "must be epoch seconds, ISO text or a datetime")


def _tags(value: Any) -> list[str] | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [t if t is None else str(_plain(t)) for t in value]  # None stays invalid


def _config_get(config: Any, *path: str) -> Any:
    for name in path:
        if config is None:
            return None
        config = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return config


def resolve_bootstrap(db_url: str | None, config: Any, explicit: str | None) -> str:
    """Pick the broker: explicit argument, a kafka:// URL (argument, then config), else the environment."""
    if explicit:
        return explicit
    for url in (db_url, _config_get(config, "output", "database_url")):
        if isinstance(url, str) and url.startswith(KAFKA_URL_SCHEME):
            servers = url[len(KAFKA_URL_SCHEME) :].strip("/")
            if not servers:
                raise ValueError(f"{url!r} names no broker: expected 'kafka://host:port[,host:port]'")
            return servers
    # The simulation builds its handler without Kafka settings, so this
    # drop-in (unlike the rest of the library) falls back to the environment.
    from_env = os.environ.get(BOOTSTRAP_ENV)
    if from_env:
        return from_env
    raise ValueError(
        f"no Kafka broker: pass bootstrap_servers=, set config.output.database_url to "
        f"'kafka://host:port', or set {BOOTSTRAP_ENV}"
    )


class KafkaDatabaseHandler:
    """Drop-in for the simulation's DatabaseHandler, writing through Kafka.

    Construct it like the original: ``KafkaDatabaseHandler(db_url, config, config_snapshot)``.
    Keyword arguments name Kafka settings explicitly (``bootstrap_servers``,
    ``topic_prefix`` and any ProducerSettings field), or pass a ready ``producer``.
    """

    def __init__(
        self,
        db_url: str | None = None,
        config: Any = None,
        config_snapshot: Mapping[str, Any] | None = None,
        *,
        producer: SocietyProducer | None = None,
        bootstrap_servers: str | None = None,
        flush_timeout: float = 60.0,
        **settings: Any,
    ) -> None:
        if producer is None:
            settings["bootstrap_servers"] = resolve_bootstrap(db_url, config, bootstrap_servers)
            producer = SocietyProducer(ProducerSettings(**settings))
        self.producer = producer
        #: Truthy like the original handler's SQLAlchemy engine, which the simulation checks.
        self.engine = producer
        self.config = config
        self.config_snapshot = config_snapshot
        self.flush_timeout = flush_timeout
        self._current_run_id: str | None = None

    # The simulation's own handler exposes these two coroutines for runs.
    async def start_simulation_run(self, config_snapshot: Mapping[str, Any] | None = None) -> str:
        """Record the start of a run; return its id (text, like the original)."""
        snapshot = config_snapshot if config_snapshot is not None else self.config_snapshot
        run_id = self.producer.start_run(snapshot)
        self._current_run_id = str(run_id)
        return self._current_run_id

    async def end_simulation_run(self, status: Any = "completed") -> None:
        """Record the run's final status and wait (off the event loop) until everything is delivered."""
        if self._current_run_id is None:
            return
        self.producer.end_run(status=_text(status) or "completed")
        await self.flush()

    async def flush(self) -> None:
        """Wait for delivery of everything recorded so far, in a worker thread."""
        loop = asyncio.get_running_loop()  # bound lazily: the handler may predate the loop
        await loop.run_in_executor(None, self.producer.flush, self.flush_timeout)

    async def close(self) -> None:
        """Flush and close the producer."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.producer.close, self.flush_timeout)

    async def save_agent_memory(self, agent_id: Any, memory_data: Mapping[str, Any], step: int) -> str:
        """Record one memory; ``memory_data`` carries content, importance, tags, related_agent_id, timestamp."""
        memory_id = self.producer.record_memory(
            _text(agent_id),
            _text(memory_data.get("content")),
            _plain(step),
            importance=_plain(memory_data.get("importance")),
            tags=_tags(memory_data.get("tags")),
            related_agent_id=_text(memory_data.get("related_agent_id")),
            timestamp=_timestamp(memory_data.get("timestamp"), tables.AGENT_MEMORIES),
        )
        return str(memory_id)

    async def save_market_transaction(self, transaction_data: Mapping[str, Any], step: int) -> None:
        """Record one trade from the market's transaction dict."""
        d = transaction_data
        self.producer.record_market_transaction(
            _text(d.get("transaction_id")),
            _plain(step),
            market_id=_text(d.get("market_id")),
            resource_type=_text(d.get("resource_type")),
            buyer_id=_text(d.get("buyer_id")),
            seller_id=_text(d.get("seller_id")),
            quantity=_plain(d.get("quantity")),
            price_per_unit=_plain(d.get("price_per_unit")),
            total_cost=_plain(d.get("total_cost")),
            buy_order_id=_text(d.get("buy_order_id")),
            sell_order_id=_text(d.get("sell_order_id")),
            timestamp=_timestamp(d.get("timestamp"), tables.MARKET_TRANSACTIONS),
        )

    async def save_banking_transaction(self, transaction_data: Mapping[str, Any], step: int, agent_id: Any) -> None:
        """Record one banking transaction of `agent_id`."""
        d = transaction_data
        self.producer.record_bank_transaction(
            _text(d.get("transaction_id")),
            _plain(step),
            account_id=_text(d.get("account_id")),
            agent_id=_text(agent_id),
            transaction_type=_text(d.get("transaction_type")),
            amount=_plain(d.get("amount")),
            balance_after=_plain(d.get("balance_after")),
            description=_text(d.get("description")),
            counterparty_id=_text(d.get("counterparty_id")),
            reference_id=_text(d.get("reference_id")),
            timestamp=_timestamp(d.get("timestamp"), tables.BANKING_TRANSACTIONS),
        )

    async def save_simulation_event(
        self,
        event_type: Any,
        step: int,
        agent_id_primary: Any = None,
        agent_id_secondary: Any = None,
        details: Any = None,
        description: Any = None,
    ) -> str:
        """Record one event.

        `details` may be any JSON-representable value (a str is a JSON string,
        not JSON text); enums, tuples, numpy, datetimes, dataclasses... are
        converted as listed in ``producers._json``, anything else raises
        InvalidRecordError naming the path inside `details`.
        """
        uid = self.producer.record_event(
            _text(event_type),
            _plain(step),
            agent_id_primary=_text(agent_id_primary),
            agent_id_secondary=_text(agent_id_secondary),
            details=None if details is None else json_text(details, tables.SIMULATION_EVENTS, "details"),
            description=_text(description),
        )
        return str(uid)
