"""society-ingest consumer side: the worker, the PostgreSQL sink and the CLI.

Needs the ``worker`` extra (psycopg); the CLI needs the ``cli`` extra.
"""

from consumers.errors import ConsumerError, FencedError, MigrationChecksumError, MigrationError, TransientError
from consumers.migrations import migrate
from consumers.settings import WorkerSettings
from consumers.worker import Worker, WorkerStats

__all__ = [
    "ConsumerError",
    "FencedError",
    "MigrationChecksumError",
    "MigrationError",
    "TransientError",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "migrate",
]
