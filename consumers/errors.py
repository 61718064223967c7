"""Exceptions of the consumer side, typed by what the worker does next."""

from __future__ import annotations

from producers.errors import SocietyIngestError


class ConsumerError(SocietyIngestError):
    """Root of the worker's errors."""


class TransientError(ConsumerError):
    """Retry with backoff; never dead-letter (connection loss, deadlock, broker down)."""


class FencedError(ConsumerError):
    """Another worker committed these partitions first: drop the batch and re-seek."""


class MigrationError(ConsumerError):
    """The database schema cannot be brought up to date safely."""


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited."""
