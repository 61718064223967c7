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
import time
import uuid
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers._deps import psycopg
from consumers.migrations import migrate
from consumers.topics import ADMIN_TIMEOUT_S, admin_client, create_topics, delete_groups
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
        self._terminated: set[int] = set()
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
        """Stop `proc` at close if it still runs (workers a failure or an interruption left behind)."""
        self._children.append(proc)
        return proc

    def terminate(self, proc: subprocess.Popen[Any]) -> None:
        """SIGTERM `proc` once: a worker given a second one exits at once, without leaving its group."""
        if proc.pid not in self._terminated and proc.poll() is None:
            self._terminated.add(proc.pid)
            proc.terminate()

    def leftovers(self) -> tuple[list[str], bool]:
        """This run's topics and whether its database still exist."""
        return leftovers(self.kafka, self.server_url, self.tag)

    def stop_children(self) -> None:
        """SIGTERM every child still running (a worker then finishes its batch and leaves its group),
        wait up to STOP_TIMEOUT_S for them all, SIGKILL those still running; return once all have exited."""
        for proc in self._children:
            self.terminate(proc)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self._children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("a worker (pid %d) did not stop within %gs of SIGTERM: killed", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
        for proc in self._children:
            if proc.stdout is not None:
                proc.stdout.close()  # its final stats, unread after an interruption

    def close(self) -> None:
        """Stop the children, then delete the groups and topics and drop the database (unless ``keep``)."""
        self.stop_children()  # first: the broker deletes no group that still has a member
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
                        + (f"; left consumer group(s) {', '.join(kept)} ({'; '.join(set(kept.values()))}; "
                           "remove with kafka-consumer-groups.sh --delete --group NAME)" if kept else ""))

    def delete_groups(self) -> tuple[list[str], dict[str, str]]:
        """Delete this run's consumer groups (its children have exited); return those deleted and, for
        those that could not be, why (see ``consumers.topics.delete_groups``)."""
        # The groups it started workers in, too: a group a worker just left is not always listed yet.
        names = sorted(set(leftover_groups(self.kafka, self.tag)) | set(self.groups))
        if not names:
            return [], {}
        deleted, kept = delete_groups(self._admin, names)
        for name, why in kept.items():
            log.warning("consumer group %s not deleted: %s", name, why)
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
