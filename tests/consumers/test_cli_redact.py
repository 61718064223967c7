"""Passwords never leave the CLI: masked in connection strings, scrubbed from any text and log record."""

from __future__ import annotations

import logging

import pytest

from consumers.cli._redact import ScrubFilter, Secrets, passwords_in, redact_dsn


@pytest.mark.parametrize(
    ("dsn", "shown", "passwords"),
    [
        ("postgresql://u:S3cret%ZZ@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db", {"S3cret%ZZ"}),
        ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db", {"p%40ss", "p@ss"}),
        ("postgresql://u:p@ss@h:5/db", "postgresql://u:***@h:5/db", {"p@ss"}),  # "@" not encoded
        ("postgresql://u:a#b?c@h/db", "postgresql://u:***@h/db", {"a#b?c"}),
        ("postgresql://u@h/db?password=qq&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require",
         {"qq"}),
        ("host=h password=abc user=u", "host=h password=*** user=u", {"abc"}),
        ("host=h password = 'it\\'s a b' user=u", "host=h password = *** user=u", {"'it\\'s a b'", "it's a b"}),
        ("postgresql://postgres@127.0.0.1:15432/society", "postgresql://postgres@127.0.0.1:15432/society", set()),
        # An "@" after the path could end a password with "/" in it: masking too much is the safe side.
        ("postgresql://h:5432/db?options=a@b", "postgresql://h:***@b", {"5432/db?options=a"}),
        # Passwords with "/" (base64), and URLs with a mistyped or missing scheme.
        ("postgresql://u:Xy/S3cret+Ab=@h:5/db", "postgresql://u:***@h:5/db", {"Xy/S3cret+Ab="}),
        ("postgresql:/u:S3cret@h/db", "postgresql:/u:***@h/db", {"S3cret"}),
        ("u:S3cret@h:5/db", "u:***@h:5/db", {"S3cret"}),
    ],
)
def test_redact_and_find_passwords(dsn, shown, passwords):
    assert redact_dsn(dsn) == shown
    assert passwords_in(dsn) == passwords


def test_scrub_replaces_every_spelling_longest_first():
    secrets = Secrets()
    secrets.add_dsn("postgresql://u:p%40ss@h/db")
    secrets.add_dsn(None)
    assert secrets.scrub('bad token "p%40ss", decoded p@ss') == 'bad token "***", decoded ***'
    assert secrets.scrub("nothing secret here") == "nothing secret here"


@pytest.mark.parametrize(("password", "message"), [
    ("ion", 'FATAL: password authentication failed for user "postgres"'),
    ("1", "cannot connect to PostgreSQL at postgres@127.0.0.1:15432/db (28P01)"),
    ("x", "connection timeout expired"),
])
def test_scrub_leaves_words_that_merely_contain_the_password(password, message):
    secrets = Secrets()
    secrets.add_dsn(f"postgresql://postgres:{password}@127.0.0.1:1/db")
    assert secrets.scrub(message) == message


def test_scrub_masks_a_malformed_url_quoted_whole():
    secrets = Secrets()
    secrets.add_dsn("postgres:S3cret@127.0.0.1:35432/hmig")
    message = 'missing "=" after "postgres:S3cret@127.0.0.1:35432/hmig" in connection info string'
    assert "S3cret" not in secrets.scrub(message)


def test_scrub_filter_hides_passwords_in_messages_and_tracebacks():
    secrets = Secrets()
    secrets.add_dsn("postgresql://u:hunter2@h/db")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(ScrubFilter(secrets))
    logger = logging.getLogger("test_cli_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting with %s", "postgresql://u:hunter2@h/db")
        try:
            raise ValueError("password hunter2 rejected")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records[0] == "connecting with postgresql://u:***@h/db"
    assert "ValueError: password *** rejected" in records[1]
    assert not any("hunter2" in r for r in records)
