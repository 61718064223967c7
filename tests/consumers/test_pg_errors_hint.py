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
