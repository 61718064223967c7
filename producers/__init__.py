"""society-ingest producer side: embed it in the simulation.

    from producers import KafkaDatabaseHandler, SocietyProducer, ProducerSettings

Depends only on confluent-kafka, fastavro and pydantic; reading memories back
(``producers.reads``) also needs psycopg, imported on first use: the ``read`` extra.
"""

from producers.codec import AvroCodec
from producers.errors import (
    CodecError,
    DeliveryError,
    InvalidRecordError,
    KafkaAuthenticationError,
    KafkaSettingsError,
    MalformedRecordError,
    NotLandedError,
    ProducerError,
    QueueFullError,
    ReadError,
    ReadUnavailableError,
    SocietyIngestError,
    UnknownSchemaError,
)
from producers.handler import KafkaDatabaseHandler
from producers.producer import DeliveryFailure, ProducerStats, SocietyProducer
from producers.kafka_config import KafkaClientSettings
from producers.reads import MemoryReader, RetrievalWeights
from producers.settings import ProducerSettings
from producers.tables import TABLES, dlq_topic, topic_for

__all__ = [
    "TABLES",
    "AvroCodec",
    "CodecError",
    "DeliveryError",
    "DeliveryFailure",
    "InvalidRecordError",
    "KafkaDatabaseHandler",
    "KafkaAuthenticationError",
    "KafkaClientSettings",
    "KafkaSettingsError",
    "MalformedRecordError",
    "MemoryReader",
    "NotLandedError",
    "ProducerError",
    "ProducerSettings",
    "ProducerStats",
    "QueueFullError",
    "ReadError",
    "ReadUnavailableError",
    "RetrievalWeights",
    "SocietyIngestError",
    "SocietyProducer",
    "UnknownSchemaError",
    "dlq_topic",
    "topic_for",
]
