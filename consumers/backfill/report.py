"""The bad-line report: NDJSON beside the checkpoint, a header line, then one line per bad line.

The report is the one file the backfill writes besides its checkpoint, and it
only ever cuts it back to what the checkpoint covers or appends to it: the
checkpoint names it, and a file that exists, is not empty and does not start
with the report's header is never touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import IO, Final

from consumers.backfill.checkpoint import written_as
from consumers.backfill.errors import BackfillError
from consumers.backfill.lines import LineError

REPORT_FORMAT: Final = "society-ingest backfill report"
REPORT_VERSION: Final = 1
#: How much of a bad line the report keeps (the rest is cut, marked "…").
REPORT_RAW_CHARS: Final = 100_000


def shown(raw: bytes) -> str:
    """A bad line as the report keeps it: text (bad UTF-8 replaced), no terminator, at most REPORT_RAW_CHARS."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    return text if len(text) <= REPORT_RAW_CHARS else text[:REPORT_RAW_CHARS] + "…"


class Report:
    """The report at `path` of the backfill whose checkpoint is `checkpoint`; opened on the first bad line."""

    def __init__(self, path: Path, checkpoint: Path, hint: str) -> None:
        self.path = path
        self._checkpoint = checkpoint
        #: What to do when the path is unusable (appended to the error line).
        self._hint = hint
        self._file: IO[bytes] | None = None

    def _fail(self, reason: str) -> BackfillError:
        return BackfillError(f"cannot write the bad-line report {self.path}: {reason}; {self._hint}")

    def check(self) -> None:
        """BackfillError unless the report can be written without harming a file the backfill did not write."""
        try:
            st = self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            folder = next(p for p in self.path.parents if p.exists())
            if not folder.is_dir():
                raise self._fail(f"{folder} is not a folder") from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise self._fail(f"no permission to create files in {folder}") from None
            return
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from e
        if not self.path.is_file():
            raise self._fail("it is not a regular file")
        if st.st_size and not written_as(self.path, REPORT_FORMAT):
            raise self._fail("the file exists and is not a backfill report, so the backfill leaves it alone")
        if not os.access(self.path, os.W_OK):
            raise self._fail("no permission to write it")

    def cut(self, size: int) -> None:
        """Cut the report back to the `size` bytes the checkpoint covers (a fresh backfill: empty); after check()."""
        try:
            if self.path.exists() and self.path.stat().st_size > size:
                with self.path.open("r+b") as f:
                    f.truncate(size)
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from e

    def write(self, bad: list[LineError]) -> None:
        """Append `bad` (after the header, when the report is new); synced by ``sync``."""
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
                if self._file.tell() == 0:
                    header = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "checkpoint": str(self._checkpoint)}
                    self._file.write((json.dumps(header) + "\n").encode("utf-8"))
            self._file.write(b"".join(
                (json.dumps(asdict(e), ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace") for e in bad
            ))
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from e

    def sync(self) -> int | None:
        """Flush and fsync what was written; the report's size (None when nothing was written)."""
        if self._file is None:
            return None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            return self._file.tell()
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from e

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def written(self) -> bool:
        """Does the report hold any bad line?"""
        try:
            return self.path.stat().st_size > 0 and written_as(self.path, REPORT_FORMAT)
        except OSError:
            return False


__all__ = ["REPORT_FORMAT", "REPORT_RAW_CHARS", "REPORT_VERSION", "Report", "shown"]
