"""Keeping passwords (the database's, Kafka's) out of everything the CLI prints.

A PostgreSQL connection string carries its password either in a URL
(``postgresql://user:secret@host/db`` or ``?password=secret``) or as
``password=secret`` in key=value form. :func:`redact_dsn` masks it for display;
:class:`Secrets` remembers the passwords of the connection strings the CLI was
given and scrubs them out of any text, because some messages quote them (psycopg's
parse errors do: ``invalid percent-encoded token: "S3cret%ZZ"``). Kafka's
passwords come on their own (:meth:`Secrets.add`), as soon as they are read.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
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


def _alone(secret: str) -> re.Pattern[str]:
    # A password given on its own: wherever it is not part of a longer word.
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")


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
            self._remember(map(_in_context, passwords_in(dsn)))
            if dsn not in self._dsns:
                self._dsns.append(dsn)

    def add(self, secret: str | None) -> None:
        """Remember a password given on its own (Kafka's SASL or TLS key password)."""
        if secret:
            with self._lock:
                self._remember([_alone(secret)])

    def _remember(self, patterns: Iterable[re.Pattern[str]]) -> None:
        known = {p.pattern for p in self._patterns}
        self._patterns += [p for p in patterns if p.pattern not in known]
        # Longest first, so a password that contains another is replaced whole.
        self._patterns.sort(key=lambda p: len(p.pattern), reverse=True)

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
