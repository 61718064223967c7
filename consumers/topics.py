"""Topic management: one topic per table plus the dead-letter topic."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic

from consumers.errors import ConsumerError
from consumers.kafka_clients import client_config
from consumers.settings import SESSION_TIMEOUT_MS
from producers import tables
from producers.kafka_config import KafkaClientSettings

#: Default retention: long enough to replay a multi-day run (30 days).
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
DEFAULT_PARTITIONS = 6
ADMIN_TIMEOUT_S = 30.0
#: How often to look at metadata while waiting for new topics to be usable.
TOPIC_POLL_S = 0.1
PROBE_TIMEOUT_S = 5.0
#: How long a consumer group may stay "not empty" after its workers exited: a worker that could not
#: leave it (killed, or stopped by a second signal) is a member until its session times out.
GROUP_EMPTY_WAIT_S = SESSION_TIMEOUT_MS / 1000 + 15.0
#: How often the state of such a group is asked.
GROUP_POLL_S = 0.25


class TopicError(ConsumerError):
    """A topic change Kafka cannot make (e.g. fewer partitions) or a topic that is missing."""


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What ``topics list/describe`` shows of one topic."""

    name: str
    partitions: int
    replication: int
    retention_ms: str | None
    compression: str | None
    cleanup_policy: str | None = None
    created: bool = False
    #: For an existing topic that ``create`` kept: how it differs from what was asked.
    differences: tuple[str, ...] = ()


def _differences(info: TopicInfo, partitions: int, replication: int, config: dict[str, str]) -> tuple[str, ...]:
    have = {"retention.ms": info.retention_ms, "compression.type": info.compression,
            "cleanup.policy": info.cleanup_policy}
    out = []
    if info.partitions != partitions:
        out.append(f"partitions {info.partitions} (asked {partitions})")
    if info.replication != replication:
        out.append(f"replication {info.replication} (asked {replication})")
    out += [f"{k} {have[k]} (asked {v})" for k, v in config.items() if have[k] != v]
    return tuple(out)


def all_topics(prefix: str) -> list[str]:
    """The table topics and the dead-letter topic of `prefix`."""
    return [tables.topic_for(prefix, t) for t in tables.TABLES] + [tables.dlq_topic(prefix)]


def admin_client(kafka: KafkaClientSettings | str, extra: dict[str, Any] | None = None) -> AdminClient:
    """An AdminClient for `kafka` (settings, or a bare PLAINTEXT address), logging through Python logging."""
    return AdminClient(client_config(kafka, extra))


def create_topics(
    admin: AdminClient,
    prefix: str,
    kafka: KafkaClientSettings | str,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication: int = 1,
    retention_ms: int = DEFAULT_RETENTION_MS,
    compression: str = "producer",
    cleanup_policy: str = "delete",
) -> list[TopicInfo]:
    """Create the topics that are missing (idempotent); describe them all.

    An existing topic is kept as it is; its ``differences`` say how it differs
    from what was asked (``alter_topics`` changes it).
    """
    names = all_topics(prefix)
    existing = set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    config = {"retention.ms": str(retention_ms), "compression.type": compression, "cleanup.policy": cleanup_policy}
    new = [NewTopic(n, partitions, replication, config=config) for n in names if n not in existing]
    created = set()
    if new:
        for name, future in admin.create_topics(new, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result()
                created.add(name)
            except KafkaException as e:
                if e.args[0].name() != "TOPIC_ALREADY_EXISTS":  # lost a race: fine
                    raise
    wait_until_usable(admin, {n: (partitions if n in created else 1) for n in names}, kafka)
    infos = describe_topics(admin, names)
    return [
        dataclasses.replace(i, created=True) if i.name in created
        else dataclasses.replace(i, differences=_differences(i, partitions, replication, config))
        for i in infos
    ]


def alter_topics(
    admin: AdminClient,
    names: list[str],
    *,
    partitions: int | None = None,
    retention_ms: int | None = None,
    compression: str | None = None,
    cleanup_policy: str | None = None,
    timeout_s: float = ADMIN_TIMEOUT_S,
) -> list[TopicInfo]:
    """Add partitions and set configs of existing topics; refuse to shrink (Kafka cannot).

    Every check runs before any change, so a refused request changes nothing.
    Adding partitions moves keys to new partitions: records of one entity
    written before and after are then in two partitions (the loader's
    idempotency keeps that correct, but per-entity order is only kept from then on).
    """
    current = {i.name: i for i in describe_topics(admin, names, timeout_s)}
    missing = [n for n in names if n not in current]
    if missing:
        raise TopicError(f"no such topic(s): {', '.join(missing)} (create them with `society-ingest topics create`)")
    if partitions is not None:
        smaller = [f"{n} has {i.partitions}" for n, i in current.items() if i.partitions > partitions]
        if smaller:
            raise TopicError(f"cannot shrink to {partitions} partition(s): {', '.join(smaller)}; Kafka cannot remove partitions")
        grow = [NewPartitions(n, partitions) for n, i in current.items() if i.partitions < partitions]
        if grow:
            for future in admin.create_partitions(grow, request_timeout=timeout_s).values():
                future.result()
    config = {k: str(v) for k, v in {"retention.ms": retention_ms, "compression.type": compression,
                                       "cleanup.policy": cleanup_policy}.items() if v is not None}
    if config:
        resources = [
            ConfigResource(ConfigResource.Type.TOPIC, n, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
            ])
            for n in names
        ]
        for future in admin.incremental_alter_configs(resources, request_timeout=timeout_s).values():
            future.result()
    return _wait_described(admin, names, partitions, config, timeout_s)


def _wait_described(
    admin: AdminClient, names: list[str], partitions: int | None, config: dict[str, str], timeout_s: float
) -> list[TopicInfo]:
    # Metadata and configs reach every broker a moment after the change is acknowledged.
    deadline = time.monotonic() + timeout_s
    while True:
        infos = describe_topics(admin, names, timeout_s)
        done = all((partitions is None or i.partitions == partitions) and not _differences(
            i, i.partitions, i.replication, config) for i in infos)
        if done or time.monotonic() >= deadline:
            return infos
        time.sleep(TOPIC_POLL_S)


def delete_topics(admin: AdminClient, names: list[str], timeout_s: float = ADMIN_TIMEOUT_S) -> list[str]:
    """Delete the `names` that exist; return them. Their records are gone for good."""
    present = [i.name for i in describe_topics(admin, names, timeout_s)]
    if present:
        for future in admin.delete_topics(present, operation_timeout=timeout_s, request_timeout=timeout_s).values():
            future.result()
    return present


def _error_code(e: KafkaException) -> Any:
    return getattr(e.args[0], "code", lambda: None)() if e.args else None


def delete_groups(admin: AdminClient, names: list[str], wait_s: float = GROUP_EMPTY_WAIT_S
                  ) -> tuple[list[str], dict[str, str]]:
    """Delete consumer groups `names`, whose members have all exited; return those deleted and, for
    each one that could not be, why. A group that does not exist is neither.

    A group the broker still calls not empty (a member that exited without leaving it counts until its
    session times out) is asked again once its state says empty, for up to `wait_s`.
    """
    deadline = time.monotonic() + wait_s
    pending, deleted, kept = sorted(set(names)), [], {}
    while pending:
        again = []
        for name, future in admin.delete_consumer_groups(pending, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_S)
                deleted.append(name)
            except KafkaException as e:
                code = _error_code(e)
                if code == KafkaError.GROUP_ID_NOT_FOUND:
                    continue  # never created (no worker joined it) or already gone
                if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                    again.append(name)
                    continue
                kept[name] = e.args[0].str() if e.args and hasattr(e.args[0], "str") else str(e)
        pending = again
        if pending:
            _wait_groups_empty(admin, pending, deadline)
    return deleted, kept


def _wait_groups_empty(admin: AdminClient, names: list[str], deadline: float) -> None:
    """Poll the groups' state until none has a member left (or `deadline`)."""
    gone = (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)
    while True:
        try:
            described = [f.result(timeout=ADMIN_TIMEOUT_S) for f in admin.describe_consumer_groups(
                names, request_timeout=ADMIN_TIMEOUT_S).values()]
            if all(d.state in gone or not d.members for d in described):
                return
        except KafkaException:
            return  # cannot tell: asking to delete again says what it is
        if time.monotonic() >= deadline:
            return
        time.sleep(GROUP_POLL_S)  # the interval between two looks at the state


def wait_until_usable(
    admin: AdminClient, partitions: dict[str, int], kafka: KafkaClientSettings | str, timeout: float = ADMIN_TIMEOUT_S
) -> None:
    """Return once every partition of every topic answers a ListOffsets request.

    Topic creation is asynchronous: metadata names a leader before the broker
    has created the partition's log (250 ms later, once, on this machine), and
    produce requests in that window fail and are retried. A CI run lost the
    first four records sent to such a partition although the idempotent
    producer reported them delivered; producing only once every partition
    answers closes that window.
    """
    deadline = time.monotonic() + timeout
    probe = Consumer(client_config(kafka, {"group.id": "society-ingest-topic-probe"}))
    try:
        while True:
            pending = _unusable(admin, probe, partitions)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topics not usable after {timeout}s: {', '.join(pending)}")
            time.sleep(TOPIC_POLL_S)
    finally:
        probe.close()


def _unusable(admin: AdminClient, probe: Consumer, partitions: dict[str, int]) -> list[str]:
    meta = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    pending = []
    for name, count in partitions.items():
        topic = meta.get(name)
        if topic is None or topic.error is not None or len(topic.partitions) < count:
            pending.append(name)
            continue
        try:
            for p in topic.partitions:
                probe.get_watermark_offsets(TopicPartition(name, p), timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            pending.append(name)
    return pending


def describe_topics(admin: AdminClient, names: list[str], timeout_s: float = ADMIN_TIMEOUT_S) -> list[TopicInfo]:
    """Partitions, replication, retention and compression of existing `names` (each request within `timeout_s`)."""
    meta = admin.list_topics(timeout=timeout_s).topics
    present = [n for n in names if n in meta]
    configs: dict[str, dict[str, Any]] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in present]
        for res, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
            configs[res.name] = {k: v.value for k, v in future.result().items()}
    out = []
    for n in present:
        parts = meta[n].partitions
        replication = len(next(iter(parts.values())).replicas) if parts else 0
        cfg = configs.get(n, {})
        out.append(TopicInfo(n, len(parts), replication, cfg.get("retention.ms"), cfg.get("compression.type"),
                             cfg.get("cleanup.policy")))
    return out


def list_topics(admin: AdminClient, prefix: str, timeout_s: float = ADMIN_TIMEOUT_S) -> list[TopicInfo]:
    """The project's topics that exist for `prefix`."""
    return describe_topics(admin, all_topics(prefix), timeout_s)
