"""society-ingest producer side: embed it in the simulation.

    from producers import KafkaDatabaseHandler, SocietyProducer, ProducerSettings

Depends only on confluent-kafka, fastavro and pydantic.
"""

from producers.codec import AvroCodec
from producers.errors import (
    CodecError,
    DeliveryError,
    InvalidRecordError,
    KafkaAuthenticationError,
    KafkaSettingsError,
    MalformedRecordError,
    ProducerError,
    QueueFullError,
    SocietyIngestError,
    UnknownSchemaError,
)
from producers.handler import KafkaDatabaseHandler
from producers.producer import DeliveryFailure, ProducerStats, SocietyProducer
from producers.kafka_config import KafkaClientSettings
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
    "ProducerError",
    "ProducerSettings",
    "ProducerStats",
    "QueueFullError",
    "SocietyIngestError",
    "SocietyProducer",
    "UnknownSchemaError",
    "dlq_topic",
    "topic_for",
]
