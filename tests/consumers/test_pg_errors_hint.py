"""The hint for a missing privilege names the role the command needs: readers for report, views and export."""

from __future__ import annotations

import psycopg

from consumers import pg_errors


def test_a_reading_command_is_told_to_grant_the_reader_role():
    e = psycopg.errors.InsufficientPrivilege("permission denied for materialized view wealth_distribution")
    reader = str(pg_errors.translate(e, "host=h user=u dbname=d", "report", reader=True))
    assert "GRANT society_reader TO <role>" in reader and "society_loader" not in reader
    assert "GRANT society_loader TO <role>" in str(pg_errors.translate(e, "host=h user=u dbname=d", "load"))
    assert pg_errors.READER_COMMANDS >= {"report", "views", "export"}


def test_a_refresh_is_told_it_needs_the_owner_not_a_grant():
    e = psycopg.errors.InsufficientPrivilege("permission denied for table schema_migrations")
    owner = str(pg_errors.translate(e, "host=h user=u dbname=d", "views refresh", reader=True, owner=True))
    assert owner.endswith("; " + pg_errors.OWNER_HINT)
    assert "GRANT society_reader" not in owner and "`society-ingest migrate`" in owner
