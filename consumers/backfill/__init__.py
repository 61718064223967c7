"""Backfill: records from newline-delimited JSON files, through the embedded producer's validation and encoding.

**Lines.** One JSON object per line (plain or gzip files; gzip is told by its
magic bytes, not by the name), whose keys are the table's column names
(``producers.columns.COLUMNS``, the seed's names). The table comes from
``table=`` (``--table``) or a ``"table"`` field on each line; a line naming
another table than ``--table`` is bad. Values in their JSON form: UUIDs and
timestamps as text (ISO 8601 with an offset), ``text[]`` as lists, jsonb
columns (``config_snapshot``, ``details``, ``record_counts``) as any JSON
value, except that a JSON *string* there is taken as JSON text (so the jsonb
string ``"a"`` is written ``"\\"a\\""``, and the jsonb ``null`` as ``"null"``).
JSON is read strictly: invalid UTF-8, NaN or Infinity, duplicate keys, a line
that is not an object, and unknown keys (named) make a bad line; numbers keep
their digits in jsonb (read as ``Decimal``), and ``-0`` in a REAL column is
-0.0. Blank lines are skipped. The
database-generated surrogate keys (``transaction_id_pk``, ``event_id``) and
load times (``loaded_at``) are not part of a record: they are ignored, and
counted in the summary, so a dump of the simulation's own tables loads as it is.

**Ids.** A memory or event without ``memory_id`` / ``event_uid`` gets a
UUIDv5 (``producers.ids.NAMESPACE``) of its table and its content (canonical
JSON: keys sorted, nulls dropped, no id), numbered by how often that same
content occurred before it in this backfill's inputs: re-running the same
files gives the same ids, and two identical lines still get two ids (the
counts take about 100–115 bytes of memory per distinct id-less content). Lines
that carry ids keep them. A run must carry its ``run_id`` (a backfill never
invents a run). A run or agent without ``updated_at`` gets the time the
backfill first started (kept in the checkpoint) plus its line's position
among all the lines of the inputs in microseconds: a later state always wins,
and a resume sends the same times.

**Batches and the checkpoint.** Lines are read in batches (``BATCH_LINES``
lines, or fewer holding ``BATCH_BYTES``); each batch is
parsed and validated whole first (the same ``validate_record`` that
``SocietyProducer.send`` uses, then ``send`` itself). A bad line stops the
run before anything of its batch is sent, unless ``skip_bad``. A batch is
sent, flushed until Kafka acknowledged every record, and only then the
checkpoint is replaced atomically (temporary file, fsync, rename): per file
the lines done and a SHA-256 of exactly those lines (without their line
terminators), so a resume continues after them only while they are unchanged
(lines after them may be fixed or appended). A kill while a batch is sent, or
between its acknowledgement and the checkpoint write, leaves some or all of
that one batch in Kafka and the resume sends it again: same records, same
ids, which the worker counts as duplicates, so PostgreSQL never holds a row
twice. The checkpoint also records the Kafka cluster and the report's path;
a run holds the checkpoint's lock (``CheckpointLock``) from start to end.

**Files it writes.** Only the checkpoint, its ``.lock`` and the bad-line report
(``report.Report``), and never one of the inputs or a file that exists and
was not written by a backfill (``checkpoint.written_as``).
"""

from consumers.backfill.checkpoint import (
    Checkpoint, CheckpointLock, FileProgress, TableCounts, default_checkpoint, default_report,
)
from consumers.backfill.errors import (
    BackfillDeliveryError, BackfillError, CheckpointInUseError, CheckpointMismatchError,
)
from consumers.backfill.lines import (
    GENERATED_COLUMNS, GZIP_MAGIC, BadLine, LineError, LineParser, canonical_content, derived_id,
)
from consumers.backfill.report import REPORT_FORMAT
from consumers.backfill.run import (
    ALREADY_DONE, BATCH_BYTES, BATCH_LINES, COMPLETE, INTERRUPTED, NO_VALID_LINE, STOPPED, Backfill, BackfillResult,
    check_inputs,
)
from consumers.backfill.sink import ProducerSink, Sink

__all__ = [
    "ALREADY_DONE", "BATCH_BYTES", "BATCH_LINES", "COMPLETE", "GENERATED_COLUMNS", "GZIP_MAGIC", "INTERRUPTED",
    "NO_VALID_LINE", "REPORT_FORMAT", "STOPPED", "Backfill", "BackfillDeliveryError", "BackfillError",
    "BackfillResult", "BadLine", "Checkpoint", "CheckpointInUseError", "CheckpointLock", "CheckpointMismatchError",
    "FileProgress", "LineError", "LineParser", "ProducerSink", "Sink", "TableCounts", "canonical_content",
    "check_inputs", "default_checkpoint", "default_report", "derived_id",
]
