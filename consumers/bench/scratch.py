"""A bench run's own database and topics, removed at the end whatever happens.

The run makes ``society_bench_<hex>`` on the server of the given URL (migrated
with ``consumers.migrations``) and topics under ``bench-<hex>-<mode>`` prefixes;
``Scratch.close`` drops the database (``WITH (FORCE)``: a worker still connected
cannot keep it) and deletes every topic and consumer group whose name starts
with ``bench-<hex>-``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers._deps import psycopg
from consumers.migrations import migrate
from consumers.topics import ADMIN_TIMEOUT_S, admin_client, create_topics
from producers.kafka_config import SETTINGS, KafkaClientSettings

log = logging.getLogger(__name__)

#: Every bench database is named this, then a hex tag; every topic prefix starts with ``bench-<hex>``.
DATABASE_PREFIX = "society_bench_"
TOPIC_PREFIX = "bench-"
#: How long a child may take to stop after SIGTERM at clean-up before it is killed.
STOP_TIMEOUT_S = 30.0


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` on the same server."""
    return make_conninfo(**{**conninfo_to_dict(url), "dbname": dbname})


def kafka_environment(kafka: KafkaClientSettings) -> dict[str, str]:
    """The environment that gives a ``society-ingest`` child process these Kafka settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    for s in SETTINGS:
        value: Any = getattr(kafka, s.field)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[s.env] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


class Scratch:
    """Scratch database, topic prefixes and child processes of one bench run; a context manager."""

    def __init__(self, kafka: KafkaClientSettings, database_url: str, *, keep: bool = False,
                 on_removed: Any = None) -> None:
        self.kafka = kafka
        self.on_removed = on_removed or log.info
        self.tag = uuid.uuid4().hex[:10]
        self.server_url = database_url
        self.database = f"{DATABASE_PREFIX}{self.tag}"
        self.database_url = with_database(database_url, self.database)
        self.keep = keep
        self._admin = admin_client(kafka)
        self._children: list[subprocess.Popen[Any]] = []
        #: Consumer groups its workers joined, deleted at close.
        self.groups: list[str] = []

    def __enter__(self) -> Scratch:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        try:
            migrate(self.database_url)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def topics(self, mode: str, partitions: int) -> str:
        """Create the table topics of a fresh prefix for `mode`; return the prefix."""
        prefix = f"{TOPIC_PREFIX}{self.tag}-{mode}"
        create_topics(self._admin, prefix, self.kafka, partitions=partitions)
        return prefix

    def adopt(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Kill `proc` at close if it still runs (workers a failure left behind)."""
        self._children.append(proc)
        return proc

    def leftovers(self) -> tuple[list[str], bool]:
        """This run's topics and whether its database still exist."""
        return leftovers(self.kafka, self.server_url, self.tag)

    def close(self) -> None:
        """Stop the children, delete the topics, drop the database (unless ``keep``)."""
        for proc in self._children:  # SIGTERM first: a worker that stops leaves its group, which can go
            if proc.poll() is None:
                proc.terminate()
        for proc in self._children:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.keep:
            log.warning("--keep: left database %s and topics %s%s-*", self.database, TOPIC_PREFIX, self.tag)
            return
        groups, kept = self.delete_groups()  # before the topics: the broker forgets a group's offsets with them
        topics, _ = self.leftovers()
        if topics:
            futures = self._admin.delete_topics(topics, operation_timeout=ADMIN_TIMEOUT_S,
                                                request_timeout=ADMIN_TIMEOUT_S)
            for future in futures.values():
                future.result(timeout=ADMIN_TIMEOUT_S)
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        self.on_removed(f"bench {self.tag}: removed database {self.database}, {len(topics)} topic(s) "
                        f"{TOPIC_PREFIX}{self.tag}-*, {len(groups)} consumer group(s)"
                        + (f"; could not delete group(s) {', '.join(kept)} (members left: Kafka forgets "
                           "them after its retention)" if kept else ""))

    def delete_groups(self) -> tuple[list[str], list[str]]:
        """Delete this run's consumer groups; return those deleted and those that could not be."""
        # The groups it started workers in, too: a group a worker just left is not always listed yet.
        names = sorted(set(leftover_groups(self.kafka, self.tag)) | set(self.groups))
        if not names:
            return [], []
        deleted, kept = [], []
        for name, future in self._admin.delete_consumer_groups(names, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_S)
                deleted.append(name)
            except KafkaException as e:
                if e.args and getattr(e.args[0], "code", lambda: None)() == KafkaError.GROUP_ID_NOT_FOUND:
                    continue  # never created (no worker joined it) or already gone
                log.warning("consumer group %s not deleted: %s", name, e)
                kept.append(name)
        return deleted, kept


def leftover_groups(kafka: KafkaClientSettings | str, tag: str) -> list[str]:
    """Consumer groups of bench run `tag`."""
    listed = admin_client(kafka).list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(timeout=ADMIN_TIMEOUT_S)
    return sorted(g.group_id for g in listed.valid if g.group_id.startswith(f"{TOPIC_PREFIX}{tag}-"))


def leftovers(kafka: KafkaClientSettings | str, server_url: str, tag: str) -> tuple[list[str], bool]:
    """Topics of bench run `tag` and whether its database exists."""
    start = f"{TOPIC_PREFIX}{tag}-"
    topics = sorted(t for t in admin_client(kafka).list_topics(timeout=ADMIN_TIMEOUT_S).topics if t.startswith(start))
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{DATABASE_PREFIX}{tag}",)).fetchone()
    return topics, exists is not None
