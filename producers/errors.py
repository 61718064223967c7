"""Exceptions of the producer side, typed by what the caller does next."""

from __future__ import annotations

from typing import Any


class SocietyIngestError(Exception):
    """Root of every error raised by society-ingest."""


class InvalidRecordError(SocietyIngestError, ValueError):
    """A record failed validation; nothing was sent. Fix the input."""

    def __init__(self, table: str, field: str, value: Any, reason: str) -> None:
        self.table = table
        self.field = field
        self.value = value
        self.reason = reason
        try:
            shown = repr(value)
        except Exception:  # e.g. RecursionError on a very deep value: the message must still be made
            shown = f"<{type(value).__name__}>"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{table}.{field}: {reason} (got {shown})")


class KafkaSettingsError(SocietyIngestError, ValueError):
    """Kafka client settings that are invalid, incomplete or unreadable (a file, a variable): fix them."""


class ProducerError(SocietyIngestError):
    """The producer could not accept or deliver records."""


class QueueFullError(ProducerError):
    """The local queue stayed full past the configured bound: slow down or retry."""


class KafkaAuthenticationError(ProducerError):
    """Kafka refused the credentials or the TLS handshake: nothing is delivered until the settings are fixed."""


class DeliveryError(ProducerError):
    """Some records could not be delivered; `failures` and `pending` say which."""

    def __init__(self, message: str, failures: list[Any], pending: int) -> None:
        super().__init__(message)
        self.failures = failures
        self.pending = pending


class CodecError(SocietyIngestError):
    """Bytes that cannot be decoded into a record: dead-letter them."""


class UnknownSchemaError(CodecError):
    """The writer schema's fingerprint is not among the versions in schemas/."""


class MalformedRecordError(CodecError):
    """Not Avro single-object encoding, or a truncated or corrupt payload."""


class ReadError(SocietyIngestError):
    """Reading memories back from PostgreSQL failed (``producers.reads``)."""


class ReadUnavailableError(ReadError):
    """PostgreSQL cannot be reached, or psycopg is not installed: retry later, or fix the settings."""


class NotLandedError(ReadError):
    """Records this producer delivered were not all loaded within the timeout; `behind` says where."""

    def __init__(self, message: str, behind: dict[tuple[str, int], int | None]) -> None:
        super().__init__(message)
        #: (topic, partition) -> records still to load there, or None when no worker stored an offset yet.
        self.behind = behind
