"""A few reused PostgreSQL connections for the read side, with a remembered outage.

psycopg is imported on first use only (the ``read`` extra), so ``import producers``
stays light. Calls block their thread: the asyncio handler runs them in worker
threads. A failed connection attempt is remembered: for ``retry_after`` seconds
(doubling up to ``MAX_RETRY_AFTER_S`` while the failures go on) calls fail at
once with ReadUnavailableError instead of each waiting out the connect timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

from producers.errors import ReadError, ReadUnavailableError

T = TypeVar("T")

#: The longest pause between two connection attempts during an outage.
MAX_RETRY_AFTER_S = 60.0
EXTRA_FIX = 'run "pip install \'society-ingest[read]\'" to fix it'


def import_psycopg() -> Any:
    """psycopg, or ReadUnavailableError naming the extra that installs it."""
    try:
        import psycopg
    except ImportError as e:
        raise ReadUnavailableError(f"reading memories needs psycopg, which is not installed; {EXTRA_FIX}") from e
    return psycopg


def describe(conninfo: str) -> str:
    """user@host:port/dbname of a connection URL, never its password."""
    psycopg = import_psycopg()
    try:
        p = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "PostgreSQL (an invalid connection URL)"
    user = f"{p['user']}@" if p.get("user") else ""
    return f"PostgreSQL at {user}{p.get('host') or 'localhost'}:{p.get('port') or 5432}/{p.get('dbname') or ''}"


class ConnectionPool:
    """At most `size` autocommit connections, opened on demand and kept for reuse; thread-safe."""

    def __init__(
        self,
        conninfo: str,
        *,
        size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        retry_after: float = 5.0,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._conninfo = conninfo
        self._size = size
        self._connect_timeout = max(1, round(connect_timeout))  # libpq takes whole seconds
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._retry_after = retry_after
        self._idle: list[Any] = []
        self._open = 0
        self._cond = threading.Condition()
        self._down_until = 0.0
        self._backoff = retry_after
        self._down_reason = ""
        self._closed = False

    @property
    def name(self) -> str:
        """Where the pool connects, for messages (no password)."""
        return describe(self._conninfo)

    def run(self, work: Callable[[Any], T]) -> T:
        """Call ``work(connection)``; on a lost connection, once more on a fresh one."""
        psycopg = import_psycopg()
        for attempt in (1, 2):
            conn = self._acquire(psycopg)
            try:
                result = work(conn)
            except psycopg.OperationalError as e:
                self._discard(conn)
                if attempt == 2 or not conn.closed:
                    raise ReadError(f"{self.name}: {e}") from e
                continue  # the server dropped the connection (restart, idle timeout): reconnect
            except psycopg.Error as e:
                self._discard(conn)
                raise ReadError(f"{self.name}: {e}") from e
            except BaseException:
                self._discard(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the idle connections; those in use close when released."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    def _acquire(self, psycopg: Any) -> Any:
        with self._cond:
            if self._closed:
                raise ReadError("the memory reader is closed")
            while not self._idle and self._open >= self._size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            now = time.monotonic()
            if now < self._down_until:
                raise ReadUnavailableError(
                    f"{self.name} is unavailable ({self._down_reason}); next attempt in {self._down_until - now:.1f}s"
                )
            self._open += 1
        try:
            options = psycopg.conninfo.conninfo_to_dict(self._conninfo).get("options") or ""
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                options=f"{options} -c statement_timeout={self._statement_timeout_ms}".strip(),
            )
        except BaseException as e:
            with self._cond:
                self._open -= 1
                self._down_reason = _first_line(e)
                self._down_until = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, MAX_RETRY_AFTER_S)
                self._cond.notify()
            if isinstance(e, psycopg.Error):
                wait = self._down_until - time.monotonic()
                raise ReadUnavailableError(
                    f"{self.name} is unavailable: {self._down_reason}; retrying after {wait:.0f}s"
                ) from e
            raise
        with self._cond:
            self._backoff = self._retry_after  # reachable again
        return conn

    def _release(self, conn: Any) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
            self._open -= 1
        conn.close()

    def _discard(self, conn: Any) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()
        conn.close()


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
