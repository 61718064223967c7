"""topics create (difference report), alter (grow, configs, never shrink) and delete (asks first), on real Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from consumers import topics
from consumers.topics import TopicError
from support.pipeline import WAIT_TIMEOUT_S, wait_for

pytestmark = pytest.mark.integration


def cli(services, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap}
    return subprocess.run([sys.executable, "-m", "consumers.cli", "topics", *args], env=env, capture_output=True,
                          text=True, input=stdin, timeout=WAIT_TIMEOUT_S)


def _state(services, prefix: str) -> dict[str, tuple]:
    infos = topics.list_topics(topics.admin_client(services.bootstrap), prefix)
    return {i.name: (i.partitions, i.retention_ms, i.compression, i.cleanup_policy) for i in infos}


def test_create_reports_how_existing_topics_differ_and_keeps_them(services, topic_prefix):
    before = _state(services, topic_prefix)  # 3 partitions each (the fixture)
    ran = cli(services, "create", "--topic-prefix", topic_prefix, "--partitions", "5", "--retention-ms", "60000",
              "--json")
    assert ran.returncode == 0, ran.stderr
    reported = {t["name"]: t["differences"] for t in json.loads(ran.stdout)}
    assert len(reported) == 7 and not any(t["created"] for t in json.loads(ran.stdout))
    for differences in reported.values():
        assert "partitions 3 (asked 5)" in differences
        assert any(d.startswith("retention.ms ") and d.endswith("(asked 60000)") for d in differences)
    assert _state(services, topic_prefix) == before  # kept as they were
    same = cli(services, "create", "--topic-prefix", topic_prefix, "--partitions", "3", "--json")
    assert all(t["differences"] == [] for t in json.loads(same.stdout))


def test_alter_grows_partitions_and_sets_configs(services, topic_prefix):
    ran = cli(services, "alter", "--topic-prefix", topic_prefix, "--partitions", "4", "--retention-ms", "3600000",
              "--json")
    assert ran.returncode == 0, ran.stderr
    state = _state(services, topic_prefix)
    assert {v[:2] for v in state.values()} == {(4, "3600000")}


def test_alter_refuses_to_shrink_and_changes_nothing(services, topic_prefix):
    before = _state(services, topic_prefix)
    with pytest.raises(TopicError, match="cannot shrink to 2 partition"):
        topics.alter_topics(topics.admin_client(services.bootstrap), topics.all_topics(topic_prefix),
                            partitions=2, retention_ms=1000)
    assert _state(services, topic_prefix) == before
    ran = cli(services, "alter", "--topic-prefix", topic_prefix, "--partitions", "1")
    assert ran.returncode == 1 and "Kafka cannot remove partitions" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_alter_of_a_missing_topic_says_so(services):
    ran = cli(services, "alter", "nosuch.topic", "--retention-ms", "1000")
    assert ran.returncode == 1 and "no such topic(s): nosuch.topic" in ran.stderr


def test_delete_asks_first_and_deletes_with_yes(services, topic_prefix):
    declined = cli(services, "delete", "--topic-prefix", topic_prefix, stdin="n\n")
    assert declined.returncode != 0 and "every record in them?" in declined.stderr
    assert len(_state(services, topic_prefix)) == 7
    deleted = cli(services, "delete", "--topic-prefix", topic_prefix, "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert sorted(json.loads(deleted.stdout)["deleted"]) == sorted(topics.all_topics(topic_prefix))
    admin = topics.admin_client(services.bootstrap)
    wait_for(lambda: not topics.list_topics(admin, topic_prefix), "the topics to be gone")
