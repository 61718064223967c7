"""Topic management: one topic per table plus the dead-letter topic."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from producers import tables

#: Default retention: long enough to replay a multi-day run (30 days).
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
DEFAULT_PARTITIONS = 6
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What ``topics list/describe`` shows of one topic."""

    name: str
    partitions: int
    replication: int
    retention_ms: str | None
    compression: str | None
    created: bool = False


def all_topics(prefix: str) -> list[str]:
    """The table topics and the dead-letter topic of `prefix`."""
    return [tables.topic_for(prefix, t) for t in tables.TABLES] + [tables.dlq_topic(prefix)]


def admin_client(bootstrap_servers: str, extra: dict[str, Any] | None = None) -> AdminClient:
    """An AdminClient for `bootstrap_servers`."""
    return AdminClient({"bootstrap.servers": bootstrap_servers, **(extra or {})})


def create_topics(
    admin: AdminClient,
    prefix: str,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication: int = 1,
    retention_ms: int = DEFAULT_RETENTION_MS,
    compression: str = "producer",
) -> list[TopicInfo]:
    """Create the topics that are missing (idempotent); describe them all."""
    names = all_topics(prefix)
    existing = set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    config = {"retention.ms": str(retention_ms), "compression.type": compression}
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
    infos = describe_topics(admin, names)
    return [dataclasses.replace(i, created=i.name in created) for i in infos]


def describe_topics(admin: AdminClient, names: list[str]) -> list[TopicInfo]:
    """Partitions, replication, retention and compression of existing `names`."""
    meta = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    present = [n for n in names if n in meta]
    configs: dict[str, dict[str, Any]] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in present]
        for res, future in admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S).items():
            configs[res.name] = {k: v.value for k, v in future.result().items()}
    out = []
    for n in present:
        parts = meta[n].partitions
        replication = len(next(iter(parts.values())).replicas) if parts else 0
        cfg = configs.get(n, {})
        out.append(TopicInfo(n, len(parts), replication, cfg.get("retention.ms"), cfg.get("compression.type")))
    return out


def list_topics(admin: AdminClient, prefix: str) -> list[TopicInfo]:
    """The project's topics that exist for `prefix`."""
    return describe_topics(admin, all_topics(prefix))
