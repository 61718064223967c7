"""KafkaDatabaseHandler: a drop-in replacement for the simulation's DatabaseHandler.

Same constructor and async methods as the simulation's own handler, but each
call only validates and enqueues a record (microseconds) instead of running a
synchronous database transaction on the event loop. It never blocks the loop:
when the local queue is full a call waits with ``await`` (other tasks keep
running) for at most ``max_block_seconds``, then raises QueueFullError. Data the simulation passes
loosely (enum members, epoch-second floats, numpy numbers, extra dict keys) is
normalized here; the typed SocietyProducer underneath stays strict. Text
fields take str, or an int, float, UUID or enum member (converted to text);
anything else (a list, bytes, an arbitrary object) is an InvalidRecordError
naming the field, never its str(). The
``details`` and ``config_snapshot`` values go through the same converter as
the typed producer's (``producers._json``): it never changes a value silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import os
import re
import uuid
from functools import partial
from typing import Any, Callable, Mapping, TypeVar

from producers import kafka_config, tables
from producers._handler_reads import READ_URL_ENV, MemoryReads
from producers._pg_pool import normalise_url
from producers._json import json_text
from producers.errors import InvalidRecordError, QueueFullError
from producers.kafka_config import KafkaClientSettings
from producers.producer import SocietyProducer, without_waiting
from producers.settings import ProducerSettings

#: Pause between two attempts to enqueue into a full local queue. Only the first waiting call
#: polls (the others wait their turn on a lock), so waiting costs ~100 cheap attempts a second.
QUEUE_FULL_RETRY_SECONDS = 0.01

#: Environment variable read when neither arguments nor config name a broker.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
#: Environment variable read when neither arguments nor the kafka:// URL name a topic prefix
#: (the same variable the workers and the CLI read).
TOPIC_PREFIX_ENV = "SOCIETY_TOPIC_PREFIX"
KAFKA_URL_SCHEME = "kafka://"

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """Enum members become their value; numpy scalars become Python numbers."""
    if isinstance(value, enum.Enum):
        return value.value
    # numpy scalars (and 0-d arrays) have ndim 0.
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _text(value: Any, table: str, field: str) -> str | None:
    """Text as is; enum members, numpy scalars, ints, floats and UUIDs as their text; nothing else."""
    if value is None or type(value) is str:
        return value
    value = _plain(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (int, float, uuid.UUID)) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return None
    raise InvalidRecordError(table, field, value, "must be text (str; an int, float, UUID or enum member is converted)")


def _mapping(value: Any, table: str, argument: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise InvalidRecordError(table, argument, value, "must be a mapping (a dict of the record's fields)")


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


def _tags(value: Any, table: str) -> list[str] | None:
    """One str or a list (tuple, numpy array) of texts; a set is refused: it has no order."""
    if type(value) is list:
        return [_text(t, table, f"tags.{i}") for i, t in enumerate(value)]  # None stays, and is invalid
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, str):
        return [str.__str__(value)]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_text(t, table, f"tags.{i}") for i, t in enumerate(value)]
    reason = "must be a list of texts (or one str)"
    if isinstance(value, (set, frozenset)):
        reason += ": a set has no order, pass a sorted list"
    raise InvalidRecordError(table, "tags", value, reason)


def _config_get(config: Any, *path: str) -> Any:
    for name in path:
        if config is None:
            return None
        config = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return config


def _kafka_url(db_url: Any, config: Any) -> tuple[str, str, str | None] | None:
    """The first kafka:// URL (argument, then config) as (url, brokers, path prefix or None)."""
    for url in (db_url, _config_get(config, "output", "database_url")):
        if isinstance(url, str) and url.startswith(KAFKA_URL_SCHEME):
            servers, _, path = url[len(KAFKA_URL_SCHEME) :].partition("/")
            return url, servers, path.strip("/") or None
    return None


def _named_broker(db_url: str | None, config: Any, explicit: str | None) -> str | None:
    """The broker the arguments name: the explicit one, else a kafka:// URL (argument, then config); else None."""
    if explicit:
        return explicit
    found = _kafka_url(db_url, config)
    if found is None:
        return None
    url, servers, _ = found
    if not servers:
        raise ValueError(f"{url!r} names no broker: expected 'kafka://host:port[,host:port][/prefix]'")
    return servers


#: URL schemes of PostgreSQL connection URLs (the simulation's own db_url may be one).
_PG_SCHEMES = ("postgresql://", "postgres://")


def resolve_read_url(explicit: str | None, db_url: Any, config: Any) -> str | None:
    """The database to read memories from: `explicit`, a postgresql:// (or SQLAlchemy-style
    ``postgresql+driver://``) `db_url` (argument, then
    ``config.output.database_url``), ``SOCIETY_READ_DATABASE_URL``, ``DATABASE_URL``; else None."""
    if explicit:
        return explicit
    for url in (db_url, _config_get(config, "output", "database_url")):
        if isinstance(url, str) and (url.startswith(_PG_SCHEMES) or normalise_url(url) != url):
            return url
    return next((os.environ[v] for v in READ_URL_ENV if os.environ.get(v)), None)


def resolve_bootstrap(db_url: str | None, config: Any, explicit: str | None) -> str:
    """Pick the broker: explicit argument, a kafka:// URL (argument, then config), else the environment."""
    named = _named_broker(db_url, config, explicit)
    if named is not None:
        return named
    # The simulation builds its handler without Kafka settings, so this
    # drop-in (unlike the rest of the library) falls back to the environment.
    from_env = os.environ.get(BOOTSTRAP_ENV)
    if from_env:
        return from_env
    raise ValueError(
        f"no Kafka broker: pass bootstrap_servers=, set config.output.database_url to "
        f"'kafka://host:port', or set {BOOTSTRAP_ENV}"
    )


def resolve_kafka(db_url: str | None, config: Any, explicit: str | None) -> KafkaClientSettings:
    """The handler's Kafka client settings, read from the environment as the CLI reads them.

    The broker: the one the arguments name (see :func:`resolve_bootstrap`), else
    ``bootstrap.servers`` in the ``KAFKA_CONFIG_FILE`` file, else ``KAFKA_BOOTSTRAP_SERVERS``.
    The rest (security protocol, SASL, TLS, client id): that file, else ``KAFKA_SECURITY_PROTOCOL``,
    ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD[_FILE]`` … (see ``producers.kafka_config``).
    """
    named = _named_broker(db_url, config, explicit)
    if named is None and not os.environ.get(kafka_config.CONFIG_FILE_ENV):
        named = resolve_bootstrap(db_url, config, explicit)  # the environment's, or "no Kafka broker"
    return kafka_config.resolve(flags={"bootstrap_servers": named}, environ=os.environ)


def resolve_topic_prefix(db_url: str | None, config: Any, explicit: str | None) -> str:
    """Pick the topic prefix: explicit argument, the kafka:// URL's path, the environment, else "society".

    The URL is the one that names the broker (``kafka://host:port/<prefix>``,
    from `db_url`, then ``config.output.database_url``). Raises ValueError
    for a prefix Kafka topic names cannot carry, naming where it came from.
    """
    found = _kafka_url(db_url, config)
    candidates = (
        (explicit, "topic_prefix="),
        (found[2] if found else None, f"the path of {found[0]!r}" if found else ""),
        (os.environ.get(TOPIC_PREFIX_ENV) or None, TOPIC_PREFIX_ENV),
    )
    for prefix, source in candidates:
        if prefix is not None:
            if not isinstance(prefix, str) or not re.match(tables.TOPIC_PREFIX_PATTERN, prefix):
                raise ValueError(
                    f"invalid topic prefix {prefix!r} from {source}: use letters, digits, '.', '_' or '-'"
                )
            return prefix
    return tables.DEFAULT_TOPIC_PREFIX


class KafkaDatabaseHandler(MemoryReads):
    """Drop-in for the simulation's DatabaseHandler, writing through Kafka.

    Construct it like the original: ``KafkaDatabaseHandler(db_url, config, config_snapshot)``.
    Keyword arguments name Kafka settings explicitly (``bootstrap_servers``,
    ``topic_prefix``, ``kafka`` (a KafkaClientSettings) and any ProducerSettings
    field), or pass a ready ``producer``.

    Where the settings come from, first match wins (this drop-in is the one
    part of the library that reads the environment, because the simulation
    constructs it without Kafka settings):

    - broker: ``bootstrap_servers=``, a ``kafka://host:port[/prefix]`` URL in
      `db_url` or ``config.output.database_url``, ``KAFKA_BOOTSTRAP_SERVERS``;
    - topic prefix: ``topic_prefix=``, that URL's path, ``SOCIETY_TOPIC_PREFIX``,
      else ``"society"``;
    - security (SASL, TLS) and client id: ``kafka=``, else the environment as
      the CLI reads it (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
      ``KAFKA_SSL_*``, ``KAFKA_CONFIG_FILE``), with the broker found above.

    Memories are read back from PostgreSQL (``get_recent_agent_memories``,
    ``retrieve_memories``, ``wait_until_landed``; see ``producers._handler_reads``):
    ``read_database_url=``, else a ``postgresql://`` `db_url`, else
    ``SOCIETY_READ_DATABASE_URL`` or ``DATABASE_URL``; ``loader_group=`` names the
    workers' consumer group, or pass a ready ``reader`` (a ``MemoryReader``).
    """

    def __init__(
        self,
        db_url: str | None = None,
        config: Any = None,
        config_snapshot: Mapping[str, Any] | None = None,
        *,
        producer: SocietyProducer | None = None,
        bootstrap_servers: str | None = None,
        topic_prefix: str | None = None,
        kafka: KafkaClientSettings | None = None,
        flush_timeout: float = 60.0,
        read_database_url: str | None = None,
        loader_group: str | None = None,
        reader: Any = None,
        **settings: Any,
    ) -> None:
        self._init_reads(resolve_read_url(read_database_url, db_url, config), loader_group, reader)
        if producer is None:
            if kafka is not None and bootstrap_servers is not None:
                raise ValueError("pass kafka= or bootstrap_servers=, not both: kafka= names the brokers")
            settings["kafka"] = kafka or resolve_kafka(db_url, config, bootstrap_servers)
            settings["topic_prefix"] = resolve_topic_prefix(db_url, config, topic_prefix)
            producer = SocietyProducer(ProducerSettings(**settings))
        elif bootstrap_servers is not None or topic_prefix is not None or kafka is not None or settings:
            raise ValueError("pass either producer= or Kafka settings, not both: the producer has its own settings")
        self.producer = producer
        #: Truthy like the original handler's SQLAlchemy engine, which the simulation checks.
        self.engine = producer
        self.config = config
        self.config_snapshot = config_snapshot
        self.flush_timeout = flush_timeout
        self._current_run_id: str | None = None
        # Held by the call waiting for queue space; later calls queue up behind it, in order.
        self._waiting = asyncio.Lock()

    async def _enqueue(self, call: Callable[[], T]) -> T:
        """Run a producer call without ever blocking the event loop.

        When the local queue is full the call is retried after ``await``-ed
        pauses, for at most the producer's ``max_block_seconds``, then
        QueueFullError. A failed attempt takes no sequence number, so the
        record keeps the id it would have had without the wait.
        """
        if not self._waiting.locked():
            try:
                return without_waiting(call)
            except QueueFullError:
                pass
        bound = self.producer.settings.max_block_seconds
        self.producer._count_queue_full_wait()
        try:
            async with asyncio.timeout(bound), self._waiting:
                while True:
                    try:
                        return without_waiting(call)
                    except QueueFullError:
                        await asyncio.sleep(QUEUE_FULL_RETRY_SECONDS)
        except TimeoutError:
            raise QueueFullError(
                f"local queue full for {bound}s ({self.producer.stats().in_queue} records waiting for the broker)"
            ) from None

    # The simulation's own handler exposes these two coroutines for runs.
    async def start_simulation_run(self, config_snapshot: Mapping[str, Any] | None = None) -> str:
        """Record the start of a run; return its id (text, like the original)."""
        snapshot = config_snapshot if config_snapshot is not None else self.config_snapshot
        run_id = await self._enqueue(partial(self.producer.start_run, snapshot))
        self._current_run_id = str(run_id)
        return self._current_run_id

    async def end_simulation_run(self, status: Any = "completed") -> None:
        """Record the run's final status and wait (off the event loop) until everything is delivered."""
        if self._current_run_id is None:
            return
        status = _text(status, tables.SIMULATION_RUNS, "status") or "completed"
        await self._enqueue(partial(self.producer.end_run, status=status))
        await self.flush()

    async def flush(self) -> None:
        """Wait for delivery of everything recorded so far, in a worker thread."""
        loop = asyncio.get_running_loop()  # bound lazily: the handler may predate the loop
        await loop.run_in_executor(None, self.producer.flush, self.flush_timeout)

    async def close(self) -> None:
        """Flush and close the producer."""
        loop = asyncio.get_running_loop()
        self._close_reads()
        await loop.run_in_executor(None, self.producer.close, self.flush_timeout)

    async def save_agent_memory(self, agent_id: Any, memory_data: Mapping[str, Any], step: int) -> str:
        """Record one memory; ``memory_data`` carries content, importance, tags, related_agent_id, timestamp."""
        t = tables.AGENT_MEMORIES
        d = _mapping(memory_data, t, "memory_data")
        memory_id = await self._enqueue(partial(
            self.producer.record_memory,
            _text(agent_id, t, "agent_id_str"),
            _text(d.get("content"), t, "content"),
            _plain(step),
            importance=_plain(d.get("importance")),
            tags=_tags(d.get("tags"), t),
            related_agent_id=_text(d.get("related_agent_id"), t, "related_agent_id"),
            timestamp=_timestamp(d.get("timestamp"), t),
        ))
        return str(memory_id)

    async def save_market_transaction(self, transaction_data: Mapping[str, Any], step: int) -> None:
        """Record one trade from the market's transaction dict."""
        t = tables.MARKET_TRANSACTIONS
        d = _mapping(transaction_data, t, "transaction_data")
        await self._enqueue(partial(
            self.producer.record_market_transaction,
            _text(d.get("transaction_id"), t, "transaction_sim_id"),
            _plain(step),
            market_id=_text(d.get("market_id"), t, "market_id"),
            resource_type=_text(d.get("resource_type"), t, "resource_type"),
            buyer_id=_text(d.get("buyer_id"), t, "buyer_agent_id"),
            seller_id=_text(d.get("seller_id"), t, "seller_agent_id"),
            quantity=_plain(d.get("quantity")),
            price_per_unit=_plain(d.get("price_per_unit")),
            total_cost=_plain(d.get("total_cost")),
            buy_order_id=_text(d.get("buy_order_id"), t, "buy_order_id"),
            sell_order_id=_text(d.get("sell_order_id"), t, "sell_order_id"),
            timestamp=_timestamp(d.get("timestamp"), t),
        ))

    async def save_banking_transaction(self, transaction_data: Mapping[str, Any], step: int, agent_id: Any) -> None:
        """Record one banking transaction of `agent_id`."""
        t = tables.BANKING_TRANSACTIONS
        d = _mapping(transaction_data, t, "transaction_data")
        await self._enqueue(partial(
            self.producer.record_bank_transaction,
            _text(d.get("transaction_id"), t, "transaction_sim_id"),
            _plain(step),
            account_id=_text(d.get("account_id"), t, "account_id"),
            agent_id=_text(agent_id, t, "agent_id_str"),
            transaction_type=_text(d.get("transaction_type"), t, "transaction_type"),
            amount=_plain(d.get("amount")),
            balance_after=_plain(d.get("balance_after")),
            description=_text(d.get("description"), t, "description"),
            counterparty_id=_text(d.get("counterparty_id"), t, "counterparty_id"),
            reference_id=_text(d.get("reference_id"), t, "reference_id"),
            timestamp=_timestamp(d.get("timestamp"), t),
        ))

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
        t = tables.SIMULATION_EVENTS
        uid = await self._enqueue(partial(
            self.producer.record_event,
            _text(event_type, t, "event_type"),
            _plain(step),
            agent_id_primary=_text(agent_id_primary, t, "agent_id_primary"),
            agent_id_secondary=_text(agent_id_secondary, t, "agent_id_secondary"),
            details=None if details is None else json_text(details, t, "details"),
            description=_text(description, t, "description"),
        ))
        return str(uid)
