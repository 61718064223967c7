"""Keeping database passwords out of everything the CLI prints.

A PostgreSQL connection string carries its password either in a URL
(``postgresql://user:secret@host/db`` or ``?password=secret``) or as
``password=secret`` in key=value form. :func:`redact_dsn` masks it for display;
:class:`Secrets` remembers the passwords of the connection strings the CLI was
given and scrubs them out of any text, because some messages quote them (psycopg's
parse errors do: ``invalid percent-encoded token: "S3cret%ZZ"``).
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote

MASK = "***"

# user:password@ of a URL: the password ends at the last "@" before the first "/" (where libpq
# stops looking for credentials), so an unencoded "@", "?" or "#" in it is still masked whole.
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:)(?P<pw>[^/]*)(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&#]*)")
# key=value form: a single-quoted value with backslash escapes, or a bare word.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s']\S*)")
_KV_ESCAPE = re.compile(r"\\(.)")


def _is_url(dsn: str) -> bool:
    return "://" in dsn.split("=", 1)[0]


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by ``***`` (URL or key=value form; malformed ones too)."""
    if _is_url(dsn):
        dsn = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", dsn, count=1)
        return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", dsn)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", dsn)


def passwords_in(dsn: str) -> set[str]:
    """Every spelling of the password(s) in `dsn`: as written, percent-decoded, unquoted."""
    found: set[str] = set()
    if _is_url(dsn):
        m = _URL_PASSWORD.match(dsn)
        if m:
            found.add(m["pw"])
        found.update(m["pw"] for m in _QUERY_PASSWORD.finditer(dsn))
        found |= {unquote(p) for p in found}
    else:
        for m in _KV_PASSWORD.finditer(dsn):
            raw = m["pw"]
            found.add(raw)
            if raw.startswith("'"):
                found.add(_KV_ESCAPE.sub(r"\1", raw.strip("'")))
    return {p for p in found if p}


class Secrets:
    """The passwords this process was given; :meth:`scrub` hides them in any text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: list[str] = []

    def add_dsn(self, dsn: str | None) -> None:
        """Remember the password(s) of a connection string."""
        if not dsn:
            return
        with self._lock:
            # Longest first, so a password that contains another is replaced whole.
            self._known = sorted(set(self._known) | passwords_in(dsn), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every remembered password replaced by ``***``."""
        for secret in self._known:
            text = text.replace(secret, MASK)
        return text


#: The CLI's passwords (one process, one set).
secrets = Secrets()


class ScrubFilter(logging.Filter):
    """Scrubs remembered passwords out of log records (message and traceback) before a handler writes them."""

    def __init__(self, known: Secrets) -> None:
        super().__init__()
        self._known = known

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self._known.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._known.scrub(record.exc_text)
        return True
