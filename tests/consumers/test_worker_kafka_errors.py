"""How the worker treats the errors librdkafka reports, with real KafkaError objects and no services.

A broker with an authorizer (ACLs) is not part of the local stack, so the
authorization errors are fed through the worker's message handling and its
error callback as librdkafka would hand them over.
"""

from __future__ import annotations

from collections.abc import Iterator
import pytest
from confluent_kafka import KafkaError

from consumers.errors import ConfigurationError
from consumers.settings import WorkerSettings
from consumers.worker import Worker
from producers import KafkaClientSettings

PREFIX = "unit"


class ErrorMessage:
    """What Consumer.consume() returns for an error: a message with error() set."""

    def __init__(self, code: int, topic: str | None = None) -> None:
        self._error, self._topic = KafkaError(code), topic

    def error(self) -> KafkaError:
        return self._error

    def topic(self) -> str | None:
        return self._topic


@pytest.fixture
def worker() -> Iterator[Worker]:
    kafka = KafkaClientSettings(bootstrap_servers="b:9094", security_protocol="SASL_SSL",
                                sasl_mechanism="SCRAM-SHA-512", sasl_username="ingest", sasl_password="pw-not-shown")
    yield Worker(WorkerSettings(kafka=kafka, database_url="postgresql://u:pw@h/db", topic_prefix=PREFIX,
                                worker_id="host:7", group_id="society-loaders"))


@pytest.mark.parametrize(("code", "topic", "names"), [
    (KafkaError.GROUP_AUTHORIZATION_FAILED, None, "group society-loaders"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, f"{PREFIX}.agents", f"topic {PREFIX}.agents"),
    (KafkaError.CLUSTER_AUTHORIZATION_FAILED, None, "the cluster"),
    (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, None, "its transactional id"),
])
def test_an_authorization_error_stops_the_worker_naming_the_user(worker: Worker, code: int, topic: str | None,
                                                                  names: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        worker._accept(ErrorMessage(code, topic))
    message = str(e.value)
    assert f'user "ingest" is not authorized for {names} ({KafkaError(code).name()}): check its ACLs' in message
    assert message.startswith("Kafka at b:9094 (SASL_SSL, SCRAM-SHA-512")
    assert "\n" not in message and "pw-not-shown" not in message


def test_an_authorization_error_in_the_error_callback_is_fatal_too(worker: Worker) -> None:
    worker._on_kafka_error(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    assert worker._refused is not None and "group society-loaders" in worker._refused


def test_other_consumer_errors_are_logged_not_fatal(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    worker._accept(ErrorMessage(KafkaError._PARTITION_EOF, f"{PREFIX}.agents"))
    assert "consumer error" in caplog.text


def test_missing_topics_may_be_hidden_by_acls_when_a_user_is_configured() -> None:
    from consumers.cli._services import require_topics

    with pytest.raises(ConfigurationError, match="do not exist: run `society-ingest topics create"):
        require_topics(set(), PREFIX, ("agents",))
    kafka = KafkaClientSettings(bootstrap_servers="b:9094", security_protocol="SASL_SSL",
                                sasl_mechanism="SCRAM-SHA-512", sasl_username="ingest", sasl_password="pw")
    with pytest.raises(ConfigurationError, match=r"^topic\(s\) unit.agents, unit.dlq do not exist or are not visible "
                                                 r"to user ingest \(check its ACLs\): run `society-ingest topics"):
        require_topics(set(), PREFIX, ("agents",), kafka=kafka)


class Message(ErrorMessage):
    """A consumed record (no error), enough for the worker to take it."""

    def __init__(self) -> None:
        self._error, self._topic = None, f"{PREFIX}.agent_memories"

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0

    def value(self) -> None:
        return None  # a tombstone: dead-lettered, which is enough to show Kafka answered

    def key(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def headers(self) -> None:
        return None

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize("code", [KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT])
def test_a_kafka_outage_degrades_the_worker_until_a_message_arrives(worker: Worker, code: int) -> None:
    worker._accept(ErrorMessage(code))
    assert worker.stats.degraded and worker.stats.last_error.startswith("Kafka at b:9094 (SASL_SSL")
    worker._accept(Message())
    assert not worker.stats.degraded


def test_a_kafka_outage_reported_by_the_error_callback_ends_with_a_commit(worker: Worker) -> None:
    worker._on_kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert worker.stats.degraded and worker._refused is None
    worker._on_commit(KafkaError(KafkaError._TRANSPORT), [])
    assert worker.stats.degraded
    worker._on_commit(None, [])
    assert not worker.stats.degraded


def test_a_database_failure_during_a_kafka_outage_stays_degraded(worker: Worker) -> None:
    worker._on_kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    worker.stats.last_error = "PostgreSQL at h: connection refused"  # what _retry sets meanwhile
    worker._on_commit(None, [])
    assert worker.stats.degraded
