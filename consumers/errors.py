"""Exceptions of the consumer side, typed by what the worker does next."""

from __future__ import annotations

from producers.errors import SocietyIngestError


class ConsumerError(SocietyIngestError):
    """Root of the worker's errors."""


class TransientError(ConsumerError):
    """Retry with backoff; never dead-letter (connection loss, deadlock, broker down)."""


class FatalError(ConsumerError):
    """Retrying cannot help: stop the worker with one clear line and a non-zero exit."""


class ConfigurationError(FatalError):
    """The deployment is wrong (password, database, privileges, missing tables or schemas): fix it, then restart."""


class DeadLetterLimitError(FatalError):
    """Too many dead letters in a row or per minute: a deployment problem, not bad data."""


class Interrupted(ConsumerError):
    """Shutdown was asked while waiting on a service: the work in hand is given up (and consumed again later)."""


class FencedError(ConsumerError):
    """Another worker committed these partitions first: drop the batch and re-seek."""


class MigrationError(ConsumerError):
    """The database schema cannot be brought up to date safely."""


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited."""


class MetricsServerError(ConfigurationError):
    """The metrics and health endpoint cannot listen where asked (port in use, address not local)."""
