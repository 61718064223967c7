"""A few reused PostgreSQL connections for the read side, with a remembered outage.

psycopg is imported on first use only (the ``read`` extra), so ``import producers``
stays light. Calls block their thread: the asyncio handler runs them in worker
threads. A failed connection attempt is remembered: for ``retry_after`` seconds
(doubling up to ``MAX_RETRY_AFTER_S`` while the failures go on) calls fail at
once with ReadUnavailableError instead of each waiting out the connect timeout;
a missing table, column or privilege counts as such an outage too. A connection
the server closed is dropped and the call retried once on a new connection.
Messages never quote the URL or its password.
"""

from __future__ import annotations

import re
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


#: SQLAlchemy-style schemes (``postgresql+asyncpg://``, ``postgres://``) read as ``postgresql://``.
_SCHEME = re.compile(r"^(?:postgresql|postgres)(?:\+[A-Za-z0-9_]+)?://")
_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^@/]*)@")
INVALID_URL = "an invalid connection URL (not shown: it may hold a password)"


def normalise_url(conninfo: str) -> str:
    """`conninfo` with a SQLAlchemy-style PostgreSQL scheme (``postgresql+driver://``, ``postgres://``)
    rewritten to ``postgresql://``; anything else as is."""
    return _SCHEME.sub("postgresql://", conninfo, count=1) if isinstance(conninfo, str) else conninfo


def scrub(text: str, conninfo: str) -> str:
    """`text` without the URL's password (as written and percent-decoded) or the URL itself."""
    text = text.replace(conninfo, "<connection URL>")
    m = _PASSWORD.match(conninfo) if isinstance(conninfo, str) else None
    if m and m.group(1):
        from urllib.parse import unquote

        for secret in {m.group(1), unquote(m.group(1))}:
            text = text.replace(secret, "***")
    return text


def describe(conninfo: str) -> str:
    """user@host:port/dbname of a connection URL, never its password."""
    psycopg = import_psycopg()
    try:
        p = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return f"PostgreSQL ({INVALID_URL})"
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
        self._conninfo = normalise_url(conninfo)
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
        self._check_up()
        for attempt in (1, 2):
            # The retry opens a new connection: every idle one may be as dead as the first.
            conn = self._acquire(psycopg, fresh=attempt == 2)
            try:
                result = work(conn)
            except psycopg.errors.QueryCanceled as e:
                self._release(conn)  # a statement timeout leaves the connection usable; never retried
                raise ReadError(self._scrub(f"{self.name}: {_first_line(e)} "
                                            f"({self._statement_timeout_ms / 1000:g} s)")) from e
            except psycopg.OperationalError as e:
                lost = conn.closed or conn.broken  # before _discard, which closes it
                self._discard(conn)
                if attempt == 2 or not lost:
                    raise ReadError(self._scrub(f"{self.name}: {e}")) from e
                continue  # the server dropped the connection (restart, terminate, idle timeout): reconnect
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
                    psycopg.errors.InsufficientPrivilege) as e:
                self._release(conn)  # the connection is fine; the schema or grants are not: back off like an outage
                raise self._mark_down(_first_line(e)) from e
            except psycopg.Error as e:
                self._discard(conn)
                raise ReadError(self._scrub(f"{self.name}: {e}")) from e
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

    def _scrub(self, text: str) -> str:
        return scrub(text, self._conninfo)

    def _check_up(self) -> None:
        with self._cond:
            now = time.monotonic()
            if now < self._down_until:
                raise ReadUnavailableError(
                    f"{self.name} is unavailable ({self._down_reason}); next attempt in {self._down_until - now:.1f}s"
                )

    def _mark_down(self, reason: str) -> ReadUnavailableError:
        """Remember an outage (backing off); the error to raise."""
        with self._cond:
            self._down_reason = self._scrub(reason)
            self._down_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, MAX_RETRY_AFTER_S)
            wait = self._down_until - time.monotonic()
        return ReadUnavailableError(f"{self.name} is unavailable: {self._down_reason}; retrying after {wait:.0f}s")

    def _acquire(self, psycopg: Any, fresh: bool = False) -> Any:
        stale: list[Any] = []
        with self._cond:
            if self._closed:
                raise ReadError("the memory reader is closed")
            if fresh:  # drop the idle connections: they may all be dead
                stale, self._idle = self._idle, []
                self._open -= len(stale)
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
        for conn in stale:
            conn.close()
        try:
            try:
                options = psycopg.conninfo.conninfo_to_dict(self._conninfo).get("options") or ""
            except psycopg.Error:  # psycopg's message quotes the URL, password and all
                raise psycopg.ProgrammingError(INVALID_URL) from None
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                options=f"{options} -c statement_timeout={self._statement_timeout_ms}".strip(),
            )
        except BaseException as e:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            down = self._mark_down(_first_line(e))
            if isinstance(e, psycopg.Error):
                raise down from None  # not chained: psycopg's text may quote the URL
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
