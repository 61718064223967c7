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

# user:password@ of a URL: the password runs to the last "@" before any query, so an unencoded
# "@" or "/" in it is still masked whole (libpq would misread such a URL, and quote it in its error).
# The scheme may be mistyped ("postgresql:/") or missing ("user:secret@host/db").
_URL_PASSWORD = re.compile(
    r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:/{0,2})?[^:@/\s]*:)(?!/)(?P<pw>[^\s]*)(?P<tail>@)"
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&#]*)")
# key=value form: a single-quoted value with backslash escapes, or a bare word.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s']\S*)")
_KV_ESCAPE = re.compile(r"\\(.)")


def _is_url(dsn: str) -> bool:
    # key=value form starts with "key="; anything else with "://" or credentials "@" is a URL.
    first = dsn.split("=", 1)[0]
    return "://" in first or "@" in first


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


def _in_context(secret: str) -> re.Pattern[str]:
    # Where messages put a password: after "user:" or "password=", or quoted; never inside a word
    # (a password "ion" must not turn "authentication" into "authenticat***").
    return re.compile(r"(?<=[:=\"'\s])" + re.escape(secret) + r"(?=[@\"'&,;\s]|$)")


class Secrets:
    """The passwords this process was given; :meth:`scrub` hides them in any text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dsns: list[str] = []
        self._patterns: list[re.Pattern[str]] = []

    def add_dsn(self, dsn: str | None) -> None:
        """Remember a connection string and its password(s)."""
        if not dsn:
            return
        with self._lock:
            known = {p.pattern for p in self._patterns}
            # Longest first, so a password that contains another is replaced whole.
            found = sorted(passwords_in(dsn), key=len, reverse=True)
            self._patterns += [p for p in map(_in_context, found) if p.pattern not in known]
            self._patterns.sort(key=lambda p: len(p.pattern), reverse=True)
            if dsn not in self._dsns:
                self._dsns.append(dsn)

    def scrub(self, text: str) -> str:
        """`text` with the remembered connection strings redacted and their passwords masked."""
        for dsn in self._dsns:
            text = text.replace(dsn, redact_dsn(dsn))
        for pattern in self._patterns:
            text = pattern.sub(MASK, text)
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
